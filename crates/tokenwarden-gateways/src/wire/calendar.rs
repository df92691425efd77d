//! Wall-clock times in answers: a `YYYY-MM-DD HH:MM:SS` at a UTC offset (a 20-line
//! conversion, H. Hinnant's `days_from_civil`, kept here rather than a date crate and its
//! dependencies for one format), and `Retry-After`.

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
