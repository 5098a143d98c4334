//! The router under abuse, measured: an honest pair's throughput and ping-pong latency while
//! each attack goes on, against the same router undisturbed just before, and the router's CPU
//! and RSS (a `serve` process, so the figures are the router's alone).
//!
//! ```text
//! cargo bench --all-features --bench abuse
//! ABUSE_RUNS=5 ABUSE_MIB=64 ABUSE_PINGS=1000 ABUSE_UNPAIRED=10000 ABUSE_ONLY=reset,unpaired ...
//! ```
//!
//! Each case runs on a fresh router (`serve --handshake-timeout 1`): `ABUSE_RUNS` undisturbed
//! samples, then the attack starts, runs 1 s alone, and `ABUSE_RUNS` samples are taken while it
//! goes on. A sample is one honest pair moving `ABUSE_MIB` MiB one way (64 KiB writes, every
//! byte checked) and then `ABUSE_PINGS` 64-byte round trips. The attackers, the honest pair and
//! the router share this machine's cores, as they would share a router host.
//!
//! - `reset`: HTTP/2 rapid reset (CVE-2023-44487), 2 connections at a time opening and
//!   resetting `Stream` calls (valid and bad tokens) as fast as they can.
//! - `stalled`: 2,000 connections kept stalled in their handshake (1,000 silent, 1,000 inside
//!   the HTTP/2 preface), each replaced when the router closes it.
//! - `stalled-tls`: the same over TLS (1,000 silent, 1,000 inside the ClientHello); the honest
//!   pair uses TLS too, undisturbed and under attack.
//! - `unpaired`: `ABUSE_UNPAIRED` (10,000) callers with distinct valid tokens waiting for a peer
//!   that never comes, held for the whole case.
//! - `malformed`: 2 connections sending pairs back to back whose one side sends a 4 GiB length
//!   prefix, a compressed-flag message, a non-protobuf message, or a 1 MiB header list; every
//!   answer is checked (ABORTED with the reason for both calls; the header list refused).
//!
//! The router's CPU (utime + stime of `/proc/PID/stat`, % of one core) is printed for the
//! attack's first second alone, for the samples under attack, and for the undisturbed ones.
//! RSS: before the attack, its peak during it (VmHWM, reset before), and 2 s after it ends.
//!
//! What must hold in each case is checked by `tests/router_abuse.rs`; this measures.

use std::time::{Duration, Instant};

use jumpstarter_router::{ClientBuilder, RouterStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

#[path = "../tests/support/mod.rs"]
mod support;
use support::attack::{self, Tally};
use support::process::Serve;
use support::{env_or, proc_status_kib};

const MIB: u64 = 1024 * 1024;

/// CPU seconds a process has used: utime + stime of `/proc/PID/stat`.
fn cpu_seconds(pid: u32, ticks_per_sec: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) start with the state, field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    (field(14).unwrap_or(0.0) + field(15).unwrap_or(0.0)) / ticks_per_sec
}

/// `getconf CLK_TCK` (USER_HZ), 100 where it cannot be read.
fn ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// One honest sample.
#[derive(Clone, Copy, Debug)]
struct Sample {
    mib_per_sec: f64,
    p50: Duration,
    p99: Duration,
    /// The router's CPU over the sample, in % of one core.
    router_cpu: f64,
}

struct Honest {
    client: ClientBuilder,
    pid: u32,
    ticks: f64,
    mib: u64,
    pings: usize,
    n: usize,
}

impl Honest {
    async fn pair(&mut self) -> (RouterStream, RouterStream) {
        self.n += 1;
        let token = support::token(&format!("honest-{}", self.n));
        support::pair_up_with(&self.client, &token, b"hello").await
    }

    async fn sample(&mut self) -> Sample {
        let cpu0 = cpu_seconds(self.pid, self.ticks);
        let t0 = Instant::now();
        // Throughput: one way, every byte checked.
        let (a, mut b) = self.pair().await;
        let (mut a, took) = support::one_way(a, &mut b, self.mib * MIB, 7).await;
        b.shutdown().await.unwrap();
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).await.unwrap();
        // Latency: 64-byte round trips.
        let (mut a, mut b) = self.pair().await;
        let echo = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while b.read_exact(&mut buf).await.is_ok() {
                b.write_all(&buf).await.unwrap();
                b.flush().await.unwrap();
            }
        });
        let mut rtts = Vec::with_capacity(self.pings);
        let mut buf = [0u8; 64];
        for i in 0..self.pings {
            buf[0] = i as u8;
            let t = Instant::now();
            a.write_all(&buf).await.unwrap();
            a.flush().await.unwrap();
            a.read_exact(&mut buf).await.unwrap();
            rtts.push(t.elapsed());
            assert_eq!(buf[0], i as u8);
        }
        a.shutdown().await.unwrap();
        let _ = echo.await;
        rtts.sort();
        let wall = t0.elapsed().as_secs_f64();
        Sample {
            mib_per_sec: self.mib as f64 / took.as_secs_f64(),
            p50: rtts[rtts.len() / 2],
            p99: rtts[rtts.len() * 99 / 100],
            router_cpu: 100.0 * (cpu_seconds(self.pid, self.ticks) - cpu0) / wall,
        }
    }
}

/// An attack under way.
struct Running {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
    /// What the attack holds open (the unpaired callers), dropped at the end.
    held: Vec<attack::Unpaired>,
    bad: std::sync::Arc<std::sync::Mutex<Vec<attack::Outcome>>>,
    started: Instant,
}

impl Running {
    fn new() -> Self {
        Running {
            stop: watch::channel(false).0,
            tasks: Vec::new(),
            held: Vec::new(),
            bad: Default::default(),
            started: Instant::now(),
        }
    }

    async fn end(self) -> (Tally, f64, Vec<attack::Outcome>) {
        self.stop.send_replace(true);
        let mut tally = Tally::default();
        for t in self.tasks {
            tally += t.await.unwrap();
        }
        let secs = self.started.elapsed().as_secs_f64();
        drop(self.held);
        let bad = std::mem::take(&mut *self.bad.lock().unwrap());
        (tally, secs, bad)
    }
}

/// Starts the attack `case` on `addr`; returns it under way, and the router's CPU (% of one
/// core) during its first second alone.
async fn start(
    case: &str,
    addr: std::net::SocketAddr,
    unpaired: usize,
    cpu: impl Fn() -> f64,
) -> (Running, f64) {
    let mut r = Running::new();
    match case {
        "reset" => {
            for _ in 0..2 {
                let stop = r.stop.subscribe();
                r.tasks.push(tokio::spawn(attack::rapid_reset(addr, stop)));
            }
        }
        "stalled" | "stalled-tls" => {
            let partial = if case == "stalled" {
                attack::PARTIAL_PREFACE
            } else {
                attack::PARTIAL_CLIENT_HELLO
            };
            for _ in 0..2000 {
                let stop = r.stop.subscribe();
                r.tasks
                    .push(tokio::spawn(attack::keep_stalled(addr, partial, stop)));
            }
        }
        "unpaired" => {
            r.held = attack::unpaired_callers(addr, unpaired, "unpaired")
                .await
                .expect("open the unpaired callers");
        }
        "malformed" => {
            for w in 0..2 {
                let stop = r.stop.subscribe();
                let bad = r.bad.clone();
                r.tasks
                    .push(tokio::spawn(attack::malformed_flood(addr, w, stop, bad)));
            }
        }
        other => panic!("no case {other}"),
    }
    // The attack alone for a second: connections opened, its steady state reached.
    let alone = Instant::now();
    let cpu1 = cpu();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alone_cpu = 100.0 * (cpu() - cpu1) / alone.elapsed().as_secs_f64();
    (r, alone_cpu)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// min/median/max of `attacked[i] / median(undisturbed)`.
fn ratios(undisturbed: &[f64], attacked: &[f64]) -> String {
    let base = median(&mut undisturbed.to_vec());
    let mut r: Vec<f64> = attacked.iter().map(|a| a / base).collect();
    let med = median(&mut r);
    format!("{:.2}/{:.2}/{:.2}", r[0], med, r[r.len() - 1])
}

fn main() {
    let runs: usize = env_or("ABUSE_RUNS", 3);
    let mib: u64 = env_or("ABUSE_MIB", 32);
    let pings: usize = env_or("ABUSE_PINGS", 500);
    let unpaired: usize = env_or("ABUSE_UNPAIRED", 10_000);
    let only = std::env::var("ABUSE_ONLY").unwrap_or_default();
    let cases: Vec<&str> = ["reset", "stalled", "stalled-tls", "unpaired", "malformed"]
        .into_iter()
        .filter(|c| only.is_empty() || only.split(',').any(|o| o == *c))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ticks = ticks_per_sec();
    println!(
        "abuse: {runs} samples undisturbed then {runs} under attack per case; a sample: {mib} MiB one way + {pings} round trips of 64 B"
    );
    println!("ratios are min/median/max of (sample under attack / median undisturbed)\n");
    println!(
        "{:<12} {:<44} {:>17} {:>15} {:>15} {:>15} {:>22} {:>22}",
        "case",
        "attack",
        "throughput x",
        "p50 x",
        "p99 x",
        "MiB/s",
        "CPU %: alone/with/undist.",
        "router RSS MiB b/pk/a"
    );
    for case in cases {
        rt.block_on(async {
            let tls = case == "stalled-tls";
            let mut args = vec!["--handshake-timeout", "1"];
            if !tls {
                args.push("--plaintext");
            }
            let router = Serve::start(&args).await;
            let pid = router.proc.0.id();
            let client = if tls {
                ClientBuilder::new(format!("https://localhost:{}", router.listen.port()))
                    .insecure_skip_verify(true)
            } else {
                ClientBuilder::new(router.endpoint())
            };
            let mut honest = Honest {
                client,
                pid,
                ticks,
                mib,
                pings,
                n: 0,
            };
            honest.sample().await; // warm-up
            let mut before = Vec::new();
            for _ in 0..runs {
                before.push(honest.sample().await);
            }
            let rss_before = proc_status_kib(pid, "VmRSS");
            // Peak RSS from here on (VmHWM starts again at the current RSS).
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
            let (running, alone_cpu) =
                start(case, router.listen, unpaired, || cpu_seconds(pid, ticks)).await;
            let mut during = Vec::new();
            for _ in 0..runs {
                during.push(honest.sample().await);
            }
            let rss_peak = proc_status_kib(pid, "VmHWM").max(proc_status_kib(pid, "VmRSS"));
            let cpu_attacked = during.iter().map(|s| s.router_cpu).collect::<Vec<_>>();
            let (tally, secs, bad) = running.end().await;
            // The router lets go of what the attack left (connections close, callers leave).
            tokio::time::sleep(Duration::from_secs(2)).await;
            let rss_after = proc_status_kib(pid, "VmRSS");
            let what = match case {
                "reset" => format!(
                    "{:.0} streams/s reset on {} connections",
                    tally.attempts as f64 / secs,
                    tally.connections
                ),
                "stalled" | "stalled-tls" => format!(
                    "2,000 stalled; {:.0}/s closed by the router",
                    tally.answered as f64 / secs
                ),
                "unpaired" => format!("{unpaired} callers waiting"),
                _ => format!(
                    "{:.0} pairs/s, {}/{} answered as they must",
                    tally.attempts as f64 / secs,
                    tally.answered,
                    tally.attempts
                ),
            };
            let pick = |v: &[Sample], f: fn(&Sample) -> f64| v.iter().map(f).collect::<Vec<_>>();
            let thr = |s: &Sample| s.mib_per_sec;
            let p50 = |s: &Sample| s.p50.as_secs_f64();
            let p99 = |s: &Sample| s.p99.as_secs_f64();
            let cpu = |s: &Sample| s.router_cpu;
            println!(
                "{:<12} {:<44} {:>17} {:>15} {:>15} {:>15} {:>22} {:>22}",
                case,
                what,
                ratios(&pick(&before, thr), &pick(&during, thr)),
                ratios(&pick(&before, p50), &pick(&during, p50)),
                ratios(&pick(&before, p99), &pick(&during, p99)),
                format!(
                    "{:.0} ({:.0})",
                    median(&mut pick(&during, thr)),
                    median(&mut pick(&before, thr))
                ),
                format!(
                    "{:.0}/{:.0}/{:.0}",
                    alone_cpu,
                    median(&mut cpu_attacked.clone()),
                    median(&mut pick(&before, cpu))
                ),
                format!(
                    "{:.1}/{:.1}/{:.1}",
                    rss_before as f64 / 1024.0,
                    rss_peak as f64 / 1024.0,
                    rss_after as f64 / 1024.0
                ),
            );
            println!(
                "{:<12} p50 {:?} undisturbed, {:?} under attack",
                "",
                Duration::from_secs_f64(median(&mut pick(&before, p50))),
                Duration::from_secs_f64(median(&mut pick(&during, p50)))
            );
            assert!(bad.is_empty(), "{case}: answers that were wrong: {bad:?}");
            if case == "malformed" {
                assert!(tally.answered > 0, "the malformed attack did not run");
            }
        });
    }
}
