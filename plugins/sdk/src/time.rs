//! The gateway's clock, read as a UTC calendar date and time.
//!
//! A plugin has no clock of its own: [`Call::now_unix_ms`](crate::Call) is the gateway's clock
//! at admission, so tests can set it. [`UtcDateTime::from_unix_ms`] turns it into calendar
//! fields (proleptic Gregorian, UTC, no leap seconds).

use std::fmt;

const MS_PER_SECOND: i64 = 1_000;
const MS_PER_DAY: i64 = 86_400_000;

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Weekday {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl Weekday {
    /// Every day, Monday first.
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    /// The lowercase three-letter name: `mon`, `tue`, `wed`, `thu`, `fri`, `sat`, `sun`.
    pub fn short_name(self) -> &'static str {
        match self {
            Weekday::Mon => "mon",
            Weekday::Tue => "tue",
            Weekday::Wed => "wed",
            Weekday::Thu => "thu",
            Weekday::Fri => "fri",
            Weekday::Sat => "sat",
            Weekday::Sun => "sun",
        }
    }

    /// The day whose [`short_name`](Self::short_name) is `name` (lowercase only).
    pub fn from_short_name(name: &str) -> Option<Weekday> {
        Weekday::ALL
            .into_iter()
            .find(|day| day.short_name() == name)
    }
}

impl fmt::Display for Weekday {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

/// A point in time as UTC calendar fields, to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcDateTime {
    /// The year (proleptic Gregorian; 0 is 1 BC, negative before that).
    pub year: i64,
    /// 1 to 12.
    pub month: u8,
    /// 1 to 31.
    pub day: u8,
    /// 0 to 23.
    pub hour: u8,
    /// 0 to 59.
    pub minute: u8,
    /// 0 to 59.
    pub second: u8,
    /// 0 to 999.
    pub millisecond: u16,
    /// The day of the week.
    pub weekday: Weekday,
}

impl UtcDateTime {
    /// The calendar fields of `unix_ms` milliseconds since 1970-01-01T00:00:00Z (negative is
    /// before it).
    pub fn from_unix_ms(unix_ms: i64) -> Self {
        let days = unix_ms.div_euclid(MS_PER_DAY);
        let ms_of_day = unix_ms.rem_euclid(MS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let seconds_of_day = ms_of_day / MS_PER_SECOND;
        // 1970-01-01 was a Thursday: day 0 is index 3 of Monday-first `ALL`.
        let weekday = Weekday::ALL[to_index((days + 3).rem_euclid(7))];
        Self {
            year,
            month,
            day,
            hour: to_u8(seconds_of_day / 3_600),
            minute: to_u8(seconds_of_day / 60 % 60),
            second: to_u8(seconds_of_day % 60),
            millisecond: u16::try_from(ms_of_day % MS_PER_SECOND).unwrap_or(0),
            weekday,
        }
    }

    /// RFC 3339 in UTC to the second, `YYYY-MM-DDTHH:MM:SSZ` (for example
    /// `2026-03-01T08:05:09Z`); milliseconds are dropped. `None` for a year outside 0000 to
    /// 9999, which RFC 3339 cannot write.
    pub fn to_rfc3339(&self) -> Option<String> {
        if !(0..=9_999).contains(&self.year) {
            return None;
        }
        Some(format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        ))
    }
}

/// Year, month and day of the civil (proleptic Gregorian) date `days` after 1970-01-01,
/// counting in 400-year eras of 146,097 days that start on March 1st.
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let shifted = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097); // 0 to 146,096
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // 0 to 399
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // 0 to 365
    let month_from_march = (5 * day_of_year + 2) / 153; // 0 (March) to 11 (February)
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1; // 1 to 31
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, to_u8(month), to_u8(day))
}

/// Narrow a value the arithmetic above keeps within `u8`.
fn to_u8(value: i64) -> u8 {
    u8::try_from(value).unwrap_or(0)
}

/// Narrow a value the arithmetic above keeps within `0..7`.
fn to_index(value: i64) -> usize {
    usize::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_is_thursday_first_january_1970() {
        let epoch = UtcDateTime::from_unix_ms(0);
        assert_eq!((epoch.year, epoch.month, epoch.day), (1970, 1, 1));
        assert_eq!(
            (epoch.hour, epoch.minute, epoch.second, epoch.millisecond),
            (0, 0, 0, 0)
        );
        assert_eq!(epoch.weekday, Weekday::Thu);
        assert_eq!(epoch.to_rfc3339().unwrap(), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn a_known_instant_has_its_calendar_fields() {
        // 2024-02-29T13:45:30.250Z, a Thursday in a leap year.
        let instant = UtcDateTime::from_unix_ms(1_709_214_330_250);
        assert_eq!((instant.year, instant.month, instant.day), (2024, 2, 29));
        assert_eq!((instant.hour, instant.minute, instant.second), (13, 45, 30));
        assert_eq!(instant.millisecond, 250);
        assert_eq!(instant.weekday, Weekday::Thu);
        assert_eq!(instant.to_rfc3339().unwrap(), "2024-02-29T13:45:30Z");
    }

    #[test]
    fn the_last_millisecond_of_a_year_stays_in_that_year() {
        // 2025-12-31T23:59:59.999Z, a Wednesday.
        let instant = UtcDateTime::from_unix_ms(1_767_225_599_999);
        assert_eq!(instant.to_rfc3339().unwrap(), "2025-12-31T23:59:59Z");
        assert_eq!(instant.weekday, Weekday::Wed);
        assert_eq!(
            UtcDateTime::from_unix_ms(1_767_225_600_000)
                .to_rfc3339()
                .unwrap(),
            "2026-01-01T00:00:00Z"
        );
    }

    #[test]
    fn instants_before_the_epoch_count_backwards() {
        let instant = UtcDateTime::from_unix_ms(-1);
        assert_eq!(instant.to_rfc3339().unwrap(), "1969-12-31T23:59:59Z");
        assert_eq!(instant.millisecond, 999);
        assert_eq!(instant.weekday, Weekday::Wed);
    }

    #[test]
    fn consecutive_days_have_consecutive_weekdays() {
        let monday = 1_767_571_200_000; // 2026-01-05T00:00:00Z
        for (offset, expected) in Weekday::ALL.into_iter().enumerate() {
            let day =
                UtcDateTime::from_unix_ms(monday + i64::try_from(offset).unwrap() * MS_PER_DAY);
            assert_eq!(day.weekday, expected);
            assert_eq!(day.day, 5 + u8::try_from(offset).unwrap());
        }
    }

    #[test]
    fn years_rfc_3339_cannot_write_give_none() {
        assert_eq!(
            UtcDateTime::from_unix_ms(253_402_300_800_000).to_rfc3339(),
            None
        ); // 10000-01-01
        assert_eq!(
            UtcDateTime::from_unix_ms(-62_167_219_200_001).to_rfc3339(),
            None
        ); // before 0000
    }

    #[test]
    fn weekday_names_round_trip() {
        for day in Weekday::ALL {
            assert_eq!(Weekday::from_short_name(day.short_name()), Some(day));
        }
        assert_eq!(Weekday::from_short_name("Mon"), None);
    }
}
