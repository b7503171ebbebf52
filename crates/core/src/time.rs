//! Milliseconds: the unit of the gateway clock, and the conversion of settings into it.

use std::time::Duration;

/// `duration` in whole milliseconds, saturating at `u64::MAX` (about 584 million years).
pub(crate) fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_convert_to_whole_milliseconds_and_saturate() {
        assert_eq!(duration_ms(Duration::from_micros(2_999)), 2);
        assert_eq!(duration_ms(Duration::MAX), u64::MAX);
    }
}
