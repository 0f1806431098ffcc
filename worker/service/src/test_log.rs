//! Tests only: captures what the worker logs (tracing, debug and above, without ANSI colours)
//! so that tests can count lines per level.
//!
//! One global subscriber for the whole test binary writes each line into the buffer of the
//! thread that logged it, if that thread is capturing. Not a per-thread `set_default`: tracing
//! caches each call site's interest globally, and a call site first reached by a test thread
//! without a subscriber stayed disabled for a capturing thread running at the same time.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Mutex, Once};

/// Log lines written on this thread while the guard of [`capture`] is held.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Lines logged so far.
    pub fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().expect("lock").clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Lines at `level` ("ERROR", "WARN", "INFO", "DEBUG").
    pub fn at(&self, level: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.split_whitespace().nth(1) == Some(level))
            .collect()
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Captured>> = const { RefCell::new(None) };
}

/// The global subscriber's writer: this thread's capture, or nowhere.
struct ThreadWriter;

impl Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CURRENT.with(|c| {
            if let Some(captured) = c.borrow().as_ref() {
                captured.0.lock().expect("lock").extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Stops this thread's capture when dropped.
pub struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.borrow_mut().take());
    }
}

/// Captures everything this thread logs at debug and above until the guard drops (use with a
/// current-thread runtime: `#[tokio::test]`; work moved to other threads is not captured).
pub fn capture() -> (Captured, Guard) {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(|| ThreadWriter)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
    });
    let captured = Captured::default();
    CURRENT.with(|c| *c.borrow_mut() = Some(captured.clone()));
    (captured, Guard(()))
}
