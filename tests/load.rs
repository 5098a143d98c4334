//! Load and soak through a `serve` process, so that its memory and file descriptors are the
//! router's alone: concurrent pairs with half-close (every byte checked), and a churn of pairs
//! that end by half-close, abort or a drop without shutdown, after which the router's
//! descriptors are back at their level after warm-up, its RSS at its level halfway through,
//! and nothing is left active or pending.
//!
//! CI runs them short; the figures in the README come from the long runs:
//! `ROUTER_LOAD_PAIRS=1000 cargo test --release --all-features --test load pairs -- --nocapture`
//! and `ROUTER_SOAK_SECS=600 cargo test --release --all-features --test load soak -- --nocapture`.
#![cfg(feature = "cli")]

mod support;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use jumpstarter_router::{ClientBuilder, RouterStream};
use process::{open_fds, scrape, Serve};
use support::process;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1024 * 1024;

async fn serve() -> Serve {
    Serve::start(&["--plaintext", "--metrics-listen", "127.0.0.1:0"]).await
}

/// Active pairs and pending callers, from the router's `/metrics`.
async fn load_of(router: &Serve) -> (f64, f64) {
    let m = scrape(router.metrics.expect("--metrics-listen")).await;
    let get = |name: &str| m.get(name).copied().unwrap_or(f64::NAN);
    (
        get("jumpstarter_router_active_pairs"),
        get("jumpstarter_router_pending_callers"),
    )
}

/// Samples the router until it is idle (no pair, no caller) and its descriptors are back to
/// at most `fds` (closing a socket is the router's own business: nothing tells us when), for
/// at most 30 s. A measurement, not a synchronization: its deadline fails the test.
async fn settle(router: &Serve, fds: Option<usize>) -> (u64, usize) {
    let pid = router.proc.0.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (active, pending) = load_of(router).await;
        let open = open_fds(pid);
        if active == 0.0 && pending == 0.0 && fds.is_none_or(|max| open <= max) {
            return (proc_status_kib(pid, "VmRSS"), open);
        }
        assert!(
            Instant::now() < deadline,
            "the router did not settle: {active} active, {pending} pending, {open} fds (want <= {fds:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 200 pairs (CI) x 1 MiB each way with half-close through one `serve` process, on 8 shared
/// client connections; every byte checked. Prints the wall time and the router's peak RSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pairs_through_serve() {
    let pairs: usize = env_or("ROUTER_LOAD_PAIRS", 200);
    let router = serve().await;
    let pid = router.proc.0.id();
    let idle_rss = proc_status_kib(pid, "VmRSS");
    let started = Instant::now();
    let builder = ClientBuilder::new(router.endpoint());
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(builder.channel().await.unwrap());
    }
    load_pairs(&channels, pairs, 600, |i| token(&format!("load-{i}"))).await;
    let took = started.elapsed();
    drop(channels);
    settle(&router, None).await;
    let peak = proc_status_kib(pid, "VmHWM");
    let m = scrape(router.metrics.unwrap()).await;
    assert_eq!(m["jumpstarter_router_pairs_total"], pairs as f64);
    eprintln!(
        "{pairs} pairs x 1 MiB each way through serve: {:.1} s; router RSS idle {:.1} MiB, peak {:.1} MiB ({:.1} KiB per pair)",
        took.as_secs_f64(),
        idle_rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        (peak.saturating_sub(idle_rss)) as f64 / pairs as f64,
    );
}

/// A small deterministic generator (xorshift64*), so a failing run can be replayed from its
/// printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// 1 B to 8 MiB, spread evenly over the orders of magnitude.
    fn amount(&mut self) -> u64 {
        let bits = self.below(24);
        1 + self.below(1 << bits).min(8 * MIB - 1)
    }
}

#[derive(Clone, Copy, Debug)]
enum End {
    /// Both sides write, shut down and read to EOF.
    HalfClose,
    /// The first side drops its stream in the middle of its writes.
    Abort,
    /// The first side writes everything, flushes, and drops without shutdown.
    DropWithoutShutdown,
}

#[derive(Default, Debug)]
struct Tally {
    sessions: u64,
    clean: u64,
    aborted: u64,
    bytes: u64,
}

impl Tally {
    fn add(&mut self, t: &Tally) {
        self.sessions += t.sessions;
        self.clean += t.clean;
        self.aborted += t.aborted;
        self.bytes += t.bytes;
    }
}

/// Writes pattern `seed` from offset `at` up to `len` in random write sizes.
async fn write_pattern(
    s: &mut (impl AsyncWriteExt + Unpin),
    mut at: u64,
    len: u64,
    seed: u64,
    rng: &mut Rng,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    while at < len {
        let n = (1 + rng.below(64 * 1024)).min(len - at) as usize;
        fill_pattern(&mut buf[..n], at, seed);
        s.write_all(&buf[..n]).await?;
        at += n as u64;
    }
    Ok(())
}

/// Reads until EOF or an error, checking each byte against pattern `seed` from offset `at`;
/// the offset reached and how it ended.
async fn read_pattern(s: &mut RouterStream, seed: u64, mut at: u64) -> (u64, std::io::Result<()>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return (at, Ok(())),
            Ok(n) => {
                fill_pattern(&mut want[..n], at, seed);
                assert!(buf[..n] == want[..n], "wrong bytes at offset {at}");
                at += n as u64;
            }
            Err(e) => return (at, Err(e)),
        }
    }
}

/// One session between two streams of `endpoint`, ended as `end`; `largest` moves the most
/// there is (8 MiB each way).
async fn session(
    endpoint: &str,
    id: u64,
    end: End,
    largest: bool,
    rng: &mut Rng,
    tally: &mut Tally,
) {
    let tok = token(&format!("soak-{id}"));
    let mut a = jumpstarter_router::connect(endpoint, &tok).await.unwrap();
    let mut b = jumpstarter_router::connect(endpoint, &tok).await.unwrap();
    let (up, down) = if largest {
        (8 * MIB, 8 * MIB)
    } else {
        (rng.amount(), rng.amount())
    };
    let (seed_a, seed_b) = (id * 2, id * 2 + 1);
    let mut wrng = Rng(rng.next() | 1);
    tally.sessions += 1;
    // The first byte pairs them: both calls are at the router before either side ends.
    write_pattern(&mut a, 0, 1, seed_a, &mut wrng)
        .await
        .unwrap();
    a.flush().await.unwrap();
    let mut first = [0u8; 1];
    within(30, "the first byte", b.read_exact(&mut first))
        .await
        .unwrap();
    assert_eq!(first[0], pattern_byte(0, seed_a));
    match end {
        End::HalfClose => {
            let writer = async {
                write_pattern(&mut a, 1, up, seed_a, &mut wrng).await?;
                a.shutdown().await?;
                let got = read_pattern(&mut a, seed_b, 0).await;
                a.close().await?;
                Ok::<_, std::io::Error>(got)
            };
            let reader = async {
                let got = read_pattern(&mut b, seed_a, 1).await;
                let mut brng = Rng(seed_b | 1);
                write_pattern(&mut b, 0, down, seed_b, &mut brng).await?;
                b.shutdown().await?;
                b.close().await?;
                Ok::<_, std::io::Error>(got)
            };
            let (a_got, b_got) = within(120, "a clean session", async {
                tokio::join!(writer, reader)
            })
            .await;
            let (n, end) = b_got.expect("b's side");
            end.expect("b reads a clean EOF");
            assert_eq!(n, up, "session {id}: b lost bytes");
            let (n, end) = a_got.expect("a's side");
            end.expect("a reads a clean EOF");
            assert_eq!(n, down, "session {id}: a lost bytes");
            tally.clean += 1;
            tally.bytes += up + down;
        }
        End::Abort | End::DropWithoutShutdown => {
            let cut = match end {
                End::Abort => 1 + rng.below(up),
                _ => up,
            };
            let writer = async move {
                write_pattern(&mut a, 1, cut, seed_a, &mut wrng).await?;
                a.flush().await?;
                drop(a); // no shutdown: an abort
                Ok::<_, std::io::Error>(())
            };
            let reader = read_pattern(&mut b, seed_a, 1);
            let (w, (n, end)) = within(120, "an aborted session", async {
                tokio::join!(writer, reader)
            })
            .await;
            w.expect("the writer");
            let e = end.expect_err("an abort must never look like EOF");
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset
                        | ErrorKind::UnexpectedEof
                        | ErrorKind::ConnectionAborted
                ),
                "session {id}: {e}"
            );
            assert!(n <= cut, "session {id}: read {n} of {cut}");
            tally.aborted += 1;
            tally.bytes += n;
        }
    }
}

/// Churns sessions on `workers` concurrent workers until `until`; with `peak`, each worker
/// starts with the largest clean session, so the router meets its peak load at once.
async fn churn(
    endpoint: &str,
    until: Instant,
    workers: u64,
    seed: u64,
    next_id: u64,
    peak: bool,
) -> Tally {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let endpoint = endpoint.to_string();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng((seed ^ (w + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
            let mut tally = Tally::default();
            let mut id = next_id + w * 1_000_000;
            if peak {
                session(&endpoint, id, End::HalfClose, true, &mut rng, &mut tally).await;
                id += 1;
            }
            while Instant::now() < until {
                let end = match rng.below(4) {
                    0 => End::Abort,
                    1 => End::DropWithoutShutdown,
                    _ => End::HalfClose,
                };
                session(&endpoint, id, end, false, &mut rng, &mut tally).await;
                id += 1;
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        all.add(&t.await.unwrap());
    }
    all
}

/// Pairs arrive at random, move 1 B to 8 MiB each way in random write sizes, and end by
/// half-close, abort, or a drop without shutdown, on 8 concurrent workers for
/// `ROUTER_SOAK_SECS` (20 in CI). A tenth of the time is warm-up, which starts with the peak
/// load (8 MiB each way on every worker at once: the allocator keeps what a peak took). At the
/// end nothing is active or pending; the router's descriptors are within 10 % of their level
/// after warm-up, and its RSS within 10 % of its level halfway through the churn: what the
/// second half of the same load added. (The allocator's high water under this churn can take
/// longer than a short warm-up to reach: 17-19 MiB after 2 s, 23 MiB after 6 s and at the end
/// of a 60 s run. A leak grows in the second half as in the first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_churn_returns_to_its_warm_level() {
    let secs: u64 = env_or("ROUTER_SOAK_SECS", 20);
    let seed: u64 = env_or("ROUTER_SOAK_SEED", 0x5eed_cafe);
    eprintln!("soak: {secs} s, seed {seed:#x}");
    let router = serve().await;
    let endpoint = router.endpoint();
    let within_10_percent = |fds: usize| fds + (fds / 10).max(1);
    // Before any session: the listeners and the runtime's own descriptors.
    let idle_fds = open_fds(router.proc.0.id());
    let started = Instant::now();

    // Warm-up: the peak load first (8 MiB each way on every worker at once), then churn.
    let warm_until = started + Duration::from_secs(secs / 10);
    let warm = churn(&endpoint, warm_until, 8, seed, 0, true).await;
    // Once the sockets of the warm-up are closed.
    let (warm_rss, warm_fds) = settle(&router, Some(within_10_percent(idle_fds))).await;
    let half_until = warm_until + (started + Duration::from_secs(secs) - warm_until) / 2;
    let first = churn(
        &endpoint,
        half_until,
        8,
        seed.rotate_left(17),
        1 << 40,
        false,
    )
    .await;
    let (half_rss, _) = settle(&router, Some(within_10_percent(warm_fds))).await;
    let mut main = first;
    main.add(
        &churn(
            &endpoint,
            started + Duration::from_secs(secs),
            8,
            seed.rotate_left(29),
            2 << 40,
            false,
        )
        .await,
    );
    // Descriptors: back to within 10 % (at least one spare) of the warm level.
    let (end_rss, end_fds) = settle(&router, Some(within_10_percent(warm_fds))).await;
    let m = scrape(router.metrics.unwrap()).await;
    eprintln!(
        "soak: {:.0} s, {} sessions ({} clean, {} aborted), {:.1} GiB checked; router RSS after warm-up {:.1} MiB, halfway {:.1} MiB, at the end {:.1} MiB ({:+.1} % on halfway); fds {warm_fds} -> {end_fds}; pairs {} aborts {}",
        started.elapsed().as_secs_f64(),
        warm.sessions + main.sessions,
        warm.clean + main.clean,
        warm.aborted + main.aborted,
        (warm.bytes + main.bytes) as f64 / (1u64 << 30) as f64,
        warm_rss as f64 / 1024.0,
        half_rss as f64 / 1024.0,
        end_rss as f64 / 1024.0,
        (end_rss as f64 / half_rss as f64 - 1.0) * 100.0,
        m["jumpstarter_router_pairs_total"],
        m["jumpstarter_router_calls_total{result=\"aborted\"}"],
    );
    assert!(main.clean > 0 && main.aborted > 0, "{main:?}");
    assert_eq!(
        m["jumpstarter_router_pairs_total"],
        (warm.sessions + main.sessions) as f64
    );
    assert!(
        end_rss as f64 <= half_rss as f64 * 1.10,
        "router RSS {end_rss} KiB at the end, {half_rss} KiB halfway ({warm_rss} KiB after warm-up)"
    );
}
