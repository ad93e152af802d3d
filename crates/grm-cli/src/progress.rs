//! Progress on stderr: a bar redrawn in place on a terminal, a plain line every few seconds
//! otherwise (logs, CI). Kept by hand: indicatif draws nothing when stderr is not a terminal,
//! and labeling jobs run where only their logs show how far they got.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    what: &'static str,
    total: Option<usize>,
    done: usize,
    start: Instant,
    last: Instant,
    tty: bool,
}

fn hms(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

impl Progress {
    pub fn new(what: &'static str, total: Option<usize>) -> Self {
        let now = Instant::now();
        Self {
            what,
            total,
            done: 0,
            start: now,
            last: now - Duration::from_secs(3600),
            tty: std::io::stderr().is_terminal(),
        }
    }

    pub fn rate(&self) -> f64 {
        self.done as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }

    pub fn add(&mut self, n: usize) {
        self.done += n;
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(10)
        };
        if self.last.elapsed() >= every {
            self.draw();
        }
    }

    fn line(&self) -> String {
        let rate = self.rate();
        match self.total {
            Some(t) if t > 0 => {
                let frac = (self.done as f64 / t as f64).min(1.0);
                let eta = if rate > 0.0 {
                    hms((t.saturating_sub(self.done)) as f64 / rate)
                } else {
                    "?".into()
                };
                let bar: String = (0..30)
                    .map(|i| if (i as f64) < frac * 30.0 { '#' } else { '.' })
                    .collect();
                format!(
                    "[{bar}] {}/{t} {} ({:.1}%) {rate:.2}/s ETA {eta}",
                    self.done,
                    self.what,
                    frac * 100.0
                )
            }
            _ => format!("{} {} {rate:.2}/s", self.done, self.what),
        }
    }

    pub fn draw(&mut self) {
        self.last = Instant::now();
        let mut e = std::io::stderr().lock();
        if self.tty {
            let _ = write!(e, "\r\x1b[2K{}", self.line());
        } else {
            let _ = writeln!(e, "progress: {}", self.line());
        }
        let _ = e.flush();
    }

    pub fn finish(&mut self) {
        self.draw();
        if self.tty {
            eprintln!();
        }
    }
}
