//! One retry policy for every backend (the `backon` crate): exponential backoff with jitter,
//! a fixed number of retries, and each retry said as it happens (a `tracing` warning with
//! target `coffer::retry`, which the command line prints on stderr as "retrying (1/7) in
//! 0.2 s"), so a dead server is never half a minute of silence.
//!
//! An operation answers [`Failure::Again`] for what may pass (a dropped connection, a 5xx)
//! and [`Failure::Stop`] for what will not (a refused login, a missing file, a full quota).

use std::future::Future;
use std::time::Duration;

use backon::{BlockingRetryable, ExponentialBuilder, Retryable};

/// Why one attempt failed.
#[derive(Debug)]
pub(crate) enum Failure<E> {
    /// Worth another attempt; the text says what went wrong, for the retry notice and the
    /// final error.
    Again(String),
    /// Not worth retrying: returned at once.
    Stop(E),
}

/// How often and how patiently to retry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    /// Retries after the first attempt.
    pub retries: usize,
    /// The first wait; each next one doubles, up to `longest`.
    pub first: Duration,
    pub longest: Duration,
}

impl Policy {
    /// Attempts in all (the first one and the retries).
    pub fn attempts(&self) -> usize {
        self.retries + 1
    }

    /// Jitter adds up to the wait itself: the base is half, so each wait lies between half
    /// and all of the policy's (a fleet retrying after a server restart spreads out, and a
    /// dead server is not waited on longer than the policy says).
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::new()
            .with_min_delay(self.first / 2)
            .with_max_delay(self.longest / 2)
            .with_max_times(self.retries)
            .with_jitter()
    }
}

fn say(label: &str, why: &str, n: usize, of: usize, wait: Duration) {
    tracing::warn!(
        target: "coffer::retry",
        "{label}: {why}; retrying ({n}/{of}) in {:.1} s",
        wait.as_secs_f64()
    );
}

/// Run `op` until it succeeds, stops, or the retries are spent (then `Err(Again(last))`).
/// `label` names the place and the object in the retry notices.
pub(crate) fn blocking<T, E>(
    p: Policy,
    label: &str,
    op: impl FnMut() -> Result<T, Failure<E>>,
) -> Result<T, Failure<E>> {
    let mut n = 0;
    op.retry(p.backoff())
        .sleep(std::thread::sleep)
        .when(|e| matches!(e, Failure::Again(_)))
        .notify(|e, wait| {
            n += 1;
            if let Failure::Again(why) = e {
                say(label, why, n, p.retries, wait);
            }
        })
        .call()
}

/// [`blocking`] for async operations (the waits are tokio's).
pub(crate) async fn asynchronous<T, E, Fut>(
    p: Policy,
    label: &str,
    op: impl FnMut() -> Fut,
) -> Result<T, Failure<E>>
where
    Fut: Future<Output = Result<T, Failure<E>>>,
{
    let mut n = 0;
    op.retry(p.backoff())
        .sleep(tokio::time::sleep)
        .when(|e| matches!(e, Failure::Again(_)))
        .notify(|e, wait| {
            n += 1;
            if let Failure::Again(why) = e {
                say(label, why, n, p.retries, wait);
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Policy = Policy {
        retries: 3,
        first: Duration::from_millis(1),
        longest: Duration::from_millis(4),
    };

    #[test]
    fn retries_what_may_pass_and_stops_at_once_on_what_will_not() {
        let mut calls = 0;
        let r: Result<u8, Failure<&str>> = blocking(QUICK, "t", || {
            calls += 1;
            if calls < 3 {
                Err(Failure::Again(format!("try {calls}")))
            } else {
                Ok(7)
            }
        });
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls, 3);

        let mut calls = 0;
        let r: Result<u8, Failure<&str>> = blocking(QUICK, "t", || {
            calls += 1;
            Err(Failure::Stop("refused"))
        });
        assert!(matches!(r, Err(Failure::Stop("refused"))));
        assert_eq!(calls, 1);

        let mut calls = 0;
        let r: Result<u8, Failure<&str>> = blocking(QUICK, "t", || {
            calls += 1;
            Err(Failure::Again(format!("down {calls}")))
        });
        assert!(matches!(r, Err(Failure::Again(ref s)) if s == "down 4"), "{r:?}");
        assert_eq!(calls, QUICK.attempts());
    }

    #[test]
    fn the_async_form_counts_the_same() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut calls = 0;
        let r: Result<u8, Failure<&str>> = rt.block_on(asynchronous(QUICK, "t", || {
            calls += 1;
            let c = calls;
            async move { Err(Failure::Again(format!("down {c}"))) }
        }));
        assert!(matches!(r, Err(Failure::Again(ref s)) if s == "down 4"), "{r:?}");
        assert_eq!(calls, 4);
    }
}
