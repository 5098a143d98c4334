//! Entry points of the fuzz targets in `fuzz/` for what is not public (compiled only under
//! `cfg(fuzzing)`, which cargo-fuzz sets). Each checks its invariants and panics when one
//! breaks.

#[cfg(feature = "router")]
use crate::wire::check_chunking;

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

    let _ = check_chunking(limit, stream, &points);
}
