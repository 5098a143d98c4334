//! Entry points of the fuzz targets in `fuzz/` for what is not public (compiled only under
//! `cfg(fuzzing)`, which cargo-fuzz sets). Each checks its invariants and panics when one
//! breaks.

#[cfg(feature = "router")]
use crate::router::wire::{Parser, Scan};

/// The router's request-body parser on arbitrary bytes split at arbitrary points: the same
/// answer whatever the chunking (but for bytes of a bad message sent in earlier chunks), never
/// more than it was given, nothing after an error.
///
/// Layout of `data`: a byte for the limit, a byte for the number of cuts, two bytes per cut,
/// then the stream.
#[cfg(feature = "router")]
pub fn router_body(data: &[u8]) {
    let [limit, cuts, rest @ ..] = data else {
        return;
    };
    let limit = 1 + usize::from(*limit) * 61;
    let n = usize::from(*cuts % 16).min(rest.len() / 2);
    let (cut_bytes, stream) = rest.split_at(n * 2);
    let mut points: Vec<usize> = cut_bytes
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();
    points.extend([0, stream.len()]);
    points.sort_unstable();
    points.dedup();

    let run = |points: &[usize]| {
        let mut p = Parser::new(limit);
        let mut total = Scan::default();
        for w in points.windows(2) {
            let chunk = &stream[w[0]..w[1]];
            let s = p.scan(chunk);
            assert!(s.valid <= chunk.len(), "forwards more than it got");
            assert!(
                s.error.is_some() || s.valid == chunk.len(),
                "drops bytes without an error"
            );
            total.valid += s.valid;
            total.messages += s.messages;
            total.goaways += s.goaways;
            total.payload += s.payload;
            if s.error.is_some() {
                total.error = s.error;
                // Nothing more is read after an error.
                let after = p.scan(&stream[w[1]..]);
                assert_eq!(
                    (after.valid, after.messages),
                    (0, 0),
                    "reads after an error"
                );
                return (total, Ok(()));
            }
        }
        (total, p.finish())
    };
    let whole = run(&[0, stream.len()]);
    let split = run(&points);
    assert_eq!(whole.0.error, split.0.error);
    assert_eq!(whole.1, split.1);
    assert_eq!(
        (whole.0.messages, whole.0.goaways, whole.0.payload),
        (split.0.messages, split.0.goaways, split.0.payload)
    );
    assert!(split.0.valid >= whole.0.valid && split.0.valid <= stream.len());
    if whole.0.error.is_none() {
        assert_eq!(split.0.valid, whole.0.valid);
    }
}
