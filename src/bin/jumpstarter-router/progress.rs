//! Live tunnel progress on stderr: bytes and rates each way while a bridge runs.
//!
//! On a terminal, an indicatif line redrawn in place (5 times a second); with `--progress` on
//! anything else, one plain line a second (log-friendly, no cursor codes).

use std::io::{self, IsTerminal, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the local side (sent up the tunnel) and written to it (received).
#[derive(Clone, Debug, Default)]
pub(crate) struct Counters {
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
}

/// A local side (socket or stdio) that counts what passes through it.
pub(crate) struct Counted<'a, L: ?Sized> {
    inner: &'a mut L,
    counters: Counters,
}

impl<'a, L: ?Sized> Counted<'a, L> {
    pub(crate) fn new(inner: &'a mut L) -> Self {
        Counted {
            inner,
            counters: Counters::default(),
        }
    }

    pub(crate) fn counters(&self) -> Counters {
        self.counters.clone()
    }
}

impl<L: AsyncRead + Unpin + ?Sized> AsyncRead for Counted<'_, L> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut *me.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        me.counters.up.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<L: AsyncWrite + Unpin + ?Sized> AsyncWrite for Counted<'_, L> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut *me.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            me.counters.down.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut *me.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            me.counters.down.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Whether and how to show live progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    Off,
    /// Redrawn in place on the terminal.
    Terminal,
    /// One line a second (`--progress` when stderr is no terminal).
    Lines,
}

impl Progress {
    /// On when stderr is a terminal, unless `quiet`; `force` turns it on anywhere.
    pub(crate) fn choose(force: bool, quiet: bool) -> Self {
        match (quiet, io::stderr().is_terminal(), force) {
            (true, _, _) => Progress::Off,
            (false, true, _) => Progress::Terminal,
            (false, false, true) => Progress::Lines,
            (false, false, false) => Progress::Off,
        }
    }

    /// Starts showing `counters` for the tunnel `name`; stops (and clears the line) when the
    /// returned guard drops.
    pub(crate) fn start(self, name: &str, counters: Counters) -> Option<Live> {
        let (bar, every) = match self {
            Progress::Off => return None,
            Progress::Terminal => {
                let bar =
                    ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(5));
                let style = ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                bar.set_style(style);
                (Some(bar), Duration::from_millis(200))
            }
            Progress::Lines => (None, Duration::from_secs(1)),
        };
        let name = name.to_string();
        let shown = bar.clone();
        let ticker = tokio::spawn(async move {
            let start = Instant::now();
            let mut last = (start, 0u64, 0u64);
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = Instant::now();
                let (up, down) = (
                    counters.up.load(Ordering::Relaxed),
                    counters.down.load(Ordering::Relaxed),
                );
                let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
                let rate = |b: u64, before: u64| mib(b.saturating_sub(before)) / dt;
                let line = format!(
                    "{name}: {:.1} MiB up ({:.1} MiB/s), {:.1} MiB down ({:.1} MiB/s), {:.0} s",
                    mib(up),
                    rate(up, last.1),
                    mib(down),
                    rate(down, last.2),
                    now.duration_since(start).as_secs_f64()
                );
                match &shown {
                    Some(bar) => bar.set_message(line),
                    None => {
                        let _ = writeln!(io::stderr(), "jumpstarter-router: {line}");
                    }
                }
                last = (now, up, down);
            }
        });
        if let Some(bar) = &bar {
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        Some(Live { bar, ticker })
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// A running progress display.
pub(crate) struct Live {
    bar: Option<ProgressBar>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.ticker.abort();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
