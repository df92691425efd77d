//! Wall-clock times in answers: a `YYYY-MM-DD HH:MM:SS` at a UTC offset, and `Retry-After`.
//!
//! The date is converted by H. Hinnant's `days_from_civil`, 20 lines, rather than by a date
//! crate: `time` would add five crates (`time`, `time-core`, `deranged`, `num-conv`,
//! `powerfmt`) to every build of this crate for one format that Sipay alone uses. Its tests
//! hold the conversion to `time`'s (a dev-dependency) from 1970 to 9999.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `YYYY-MM-DD HH:MM:SS` read as wall-clock time at `utc_offset` seconds east of UTC.
#[must_use]
pub fn local_time(text: &str, utc_offset: i32) -> Option<SystemTime> {
    let (date, time) = text.trim().split_once([' ', 'T'])?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (t.next()??, t.next()??, t.next()??);
    let valid = (1970..=9999).contains(&year)
        && (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && (0..24).contains(&hour)
        && (0..60).contains(&minute)
        && (0..61).contains(&second);
    if !valid {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second
        - i64::from(utc_offset);
    UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(seconds).ok()?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The `Retry-After` of an answer (RFC 9110 §10.2.3): delay-seconds, or an HTTP date (a date
/// already past is "now"). `None` when absent or unreadable.
pub(crate) fn retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_local_times() {
        let utc = |s| {
            local_time(s, 0)
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        assert_eq!(utc("1970-01-01 00:00:00"), 0);
        assert_eq!(utc("2000-03-01 00:00:00"), 951_868_800);
        assert_eq!(utc("2021-01-29 13:46:01"), 1_611_927_961);
        let turkey = local_time("2021-01-29 16:46:01", 3 * 3600).unwrap();
        assert_eq!(
            turkey.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_611_927_961
        );
        for bad in [
            "",
            "2021-13-01 00:00:00",
            "2021-01-29",
            "yesterday",
            "2021-01-29 25:00:00",
        ] {
            assert!(local_time(bad, 0).is_none(), "{bad}");
        }
    }
}

#[cfg(test)]
mod against_a_date_crate {
    use super::*;

    /// `text` at `offset`, read by us and by `time`.
    fn agree(day: time::Date, n: i64) {
        let (hour, minute, second) = ((n % 24) as u8, (n * 7 % 60) as u8, (n * 13 % 60) as u8);
        let offset = ((n % 27 - 13) * 3600 + n % 2 * 1800) as i32;
        let text = format!(
            "{:04}-{:02}-{:02} {hour:02}:{minute:02}:{second:02}",
            day.year(),
            u8::from(day.month()),
            day.day()
        );
        let expected =
            time::PrimitiveDateTime::new(day, time::Time::from_hms(hour, minute, second).unwrap())
                .assume_offset(time::UtcOffset::from_whole_seconds(offset).unwrap())
                .unix_timestamp();
        let ours = local_time(&text, offset)
            .map(|t| i64::try_from(t.duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap());
        // Before the epoch (the first hours of 1970 at an offset east) is not a time ours can
        // give: it says so.
        assert_eq!(
            ours,
            (expected >= 0).then_some(expected),
            "{text} at {offset}"
        );
    }

    /// Every day of 1970 to 2100, and in every year to 9999 the days around its ends and
    /// February's, at times and offsets that vary with the day.
    #[test]
    fn agrees_with_the_time_crate() {
        use time::{Date, Month};
        let mut day = Date::from_calendar_date(1970, Month::January, 1).unwrap();
        let mut n = 0;
        while day.year() <= 2100 {
            agree(day, n);
            n += 1;
            day = day.next_day().unwrap();
        }
        for year in 1970..=9999 {
            let last = Date::from_calendar_date(year, Month::December, 31).unwrap();
            let march = Date::from_calendar_date(year, Month::March, 1).unwrap();
            let ordinal = u16::try_from(year * 37 % 365 + 1).unwrap();
            for day in [
                Date::from_calendar_date(year, Month::January, 1).unwrap(),
                march.previous_day().unwrap(),
                march,
                last,
                Date::from_ordinal_date(year, ordinal).unwrap(),
            ] {
                agree(day, i64::from(year) + i64::from(day.ordinal()));
                n += 1;
            }
        }
        assert_eq!(n, 47_847 + 5 * 8_030);
    }
}

#[cfg(test)]
mod retry_after_tests {
    use super::*;

    #[test]
    fn reads_seconds_and_http_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let header = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_str(v).unwrap(),
            );
            h
        };
        assert_eq!(retry_after(&header("5"), now), Some(Duration::from_secs(5)));
        assert_eq!(
            retry_after(&header(" 120 "), now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            retry_after(&header(&later), now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(retry_after(&header(&earlier), now), Some(Duration::ZERO));
        assert_eq!(retry_after(&header("soon"), now), None);
        assert_eq!(retry_after(&header("-1"), now), None);
        assert_eq!(retry_after(&http::HeaderMap::new(), now), None);
    }
}
