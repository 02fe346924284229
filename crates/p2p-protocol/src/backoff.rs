//! Exponential backoff for asking again: a peer to redial, a relay to reserve on, a relay's
//! HTTP server to read `/addrs` from (nodes and browsers alike).

use std::time::Duration;

/// 1 s, doubling to 30 s: quick after a blip (a restart takes a few seconds), and no more than
/// one attempt every half minute against a peer that stays away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    delay: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_secs(1);
    pub const MAX: Duration = Duration::from_secs(30);

    pub fn new() -> Self {
        Self { delay: Self::FIRST }
    }

    /// How long to wait before the next attempt, without counting an attempt.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// How long to wait now; the wait after it is twice as long, up to [`Backoff::MAX`].
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.delay;
        self.delay = (delay * 2).min(Self::MAX);
        delay
    }

    /// After a success: the next failure waits [`Backoff::FIRST`] again.
    pub fn reset(&mut self) {
        self.delay = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<u64> = (0..7).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.delay(), Backoff::MAX);
        b.reset();
        assert_eq!(b.next_delay(), Backoff::FIRST);
    }
}
