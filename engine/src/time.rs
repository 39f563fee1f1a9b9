//! Calendar arithmetic on Unix milliseconds (UTC), without a clock.

/// (year, month, day) of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Days since 1970-01-01 of a (year, month, day), the inverse of `civil_from_days`.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The start of a `YYYY-MM-DD` day, `offset_minutes` east of UTC, in Unix ms; `None` for
/// anything else or a day before 1970.
pub fn parse_day_ms(text: &str, offset_minutes: i16) -> Option<u64> {
    let mut parts = text.trim().splitn(3, '-');
    let (year, month, day) = (parts.next()?, parts.next()?, parts.next()?);
    if year.len() != 4 || month.len() != 2 || day.len() != 2 {
        return None;
    }
    let year: i64 = year.parse().ok()?;
    let (month, day): (u32, u32) = (month.parse().ok()?, day.parse().ok()?);
    let days = days_from_civil(year, month, day);
    // A 31 February or a 13th month reads back as another day: refuse it.
    if civil_from_days(days) != (year, month, day) {
        return None;
    }
    let ms = days * 86_400_000 - i64::from(offset_minutes) * 60_000;
    u64::try_from(ms).ok()
}

/// `2026-11-26T13:09:45.123Z`.
///
/// Digits are written into a fixed buffer: every order answer carries two or three of
/// these, and `format!` took 15% of a lookup's CPU. Years past 9999 (or before 0) take the
/// general path.
pub fn format_rfc3339_ms(ms: u64) -> String {
    if let Some(text) = rfc3339_ms_ascii(ms) {
        return String::from_utf8(text.to_vec()).expect("ASCII digits");
    }
    let [year, month, day, hours, minutes, seconds, millis] = fields_of(ms);
    format!("{year:04}-{month:02}-{day:02}T{hours:02}:{minutes:02}:{seconds:02}.{millis:03}Z")
}

/// `format_rfc3339_ms` as ASCII in a buffer, for the years 0-9999 (`None` outside them):
/// what the wire serialises without allocating.
pub fn rfc3339_ms_ascii(ms: u64) -> Option<[u8; 24]> {
    let [year, month, day, hours, minutes, seconds, millis] = fields_of(ms);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let mut put = |end: usize, width: usize, mut value: i64| {
        for at in (end - width..end).rev() {
            text[at] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(4, 4, year);
    put(7, 2, month);
    put(10, 2, day);
    put(13, 2, hours);
    put(16, 2, minutes);
    put(19, 2, seconds);
    put(23, 3, millis);
    Some(text)
}

/// Year, month, day, hours, minutes, seconds and milliseconds of a Unix time (UTC).
fn fields_of(ms: u64) -> [i64; 7] {
    let (year, month, day) = civil_from_days((ms / 86_400_000) as i64);
    let in_day = (ms % 86_400_000) as i64;
    [
        year,
        i64::from(month),
        i64::from(day),
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    ]
}

/// `YYYY-MM` of a Unix time in milliseconds.
pub fn month_of(ms: u64) -> String {
    let (year, month, _) = civil_from_days((ms / 86_400_000) as i64);
    format!("{year:04}-{month:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_digits_match_the_general_format() {
        let general = |ms: u64| {
            let (year, month, day) = civil_from_days((ms / 86_400_000) as i64);
            let in_day = ms % 86_400_000;
            format!(
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
                in_day / 3_600_000,
                in_day / 60_000 % 60,
                in_day / 1000 % 60,
                in_day % 1000
            )
        };
        let mut ms = 0u64;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            assert_eq!(format_rfc3339_ms(ms), general(ms), "at {ms}");
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ms = state % 400_000_000_000_000;
        }
        for ms in [
            0,
            86_399_999,
            253_402_300_799_999,
            253_402_300_800_000,
            u64::MAX / 2,
        ] {
            assert_eq!(format_rfc3339_ms(ms), general(ms), "at {ms}");
        }
        assert_eq!(
            format_rfc3339_ms(1_764_162_585_123),
            "2025-11-26T13:09:45.123Z"
        );
    }

    #[test]
    fn days_round_trip_and_bad_dates_are_refused() {
        for days in [0, 59, 60, 11_016, 20_000, 40_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(parse_day_ms("2000-02-29", 0), Some(951_782_400_000));
        assert_eq!(
            parse_day_ms("2000-02-29", 480),
            Some(951_782_400_000 - 8 * 3_600_000)
        );
        assert_eq!(parse_day_ms("2001-02-29", 0), None);
        assert_eq!(parse_day_ms("2001-13-01", 0), None);
        assert_eq!(parse_day_ms("yesterday", 0), None);
    }

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339_ms(951_782_400_123),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            format_rfc3339_ms(1_795_000_000_000),
            "2026-11-18T11:06:40.000Z"
        );
        assert_eq!(month_of(951_868_800_000), "2000-03");
    }
}
