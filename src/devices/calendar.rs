//! Civil dates from and to seconds since the Unix epoch (proleptic Gregorian, UTC),
//! after Howard Hinnant's `days_from_civil` algorithms.

/// A broken-down date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    /// Full year, e.g. 2026.
    pub year: i64,
    /// 1..=12.
    pub month: u32,
    /// 1..=31.
    pub day: u32,
    /// 0..=23.
    pub hour: u32,
    /// 0..=59.
    pub minute: u32,
    /// 0..=59.
    pub second: u32,
}

const SECONDS_PER_DAY: i64 = 86_400;

impl DateTime {
    /// The date and time `seconds` after 1970-01-01 00:00:00.
    pub fn from_unix(seconds: i64) -> Self {
        let days = seconds.div_euclid(SECONDS_PER_DAY);
        let of_day = seconds.rem_euclid(SECONDS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        Self {
            year,
            month,
            day,
            hour: (of_day / 3600) as u32,
            minute: (of_day / 60 % 60) as u32,
            second: (of_day % 60) as u32,
        }
    }

    /// Seconds since 1970-01-01 00:00:00. Out-of-range fields roll over.
    pub fn to_unix(&self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * SECONDS_PER_DAY
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// Day of the week, 1 = Sunday .. 7 = Saturday, as the MC146818 counts.
    pub fn weekday(&self) -> u32 {
        // 1970-01-01 was a Thursday (5 in this numbering).
        ((days_from_civil(self.year, self.month, self.day) + 4).rem_euclid(7) + 1) as u32
    }
}

fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let month = i64::from(month.clamp(1, 12));
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates_round_trip() {
        let cases = [
            (0, (1970, 1, 1, 0, 0, 0), 5),
            (951_782_400, (2000, 2, 29, 0, 0, 0), 3),
            (1_795_295_200, (2026, 11, 21, 21, 6, 40), 7),
            (4_107_542_399, (2100, 2, 28, 23, 59, 59), 1),
        ];
        for (seconds, (year, month, day, hour, minute, second), weekday) in cases {
            let dt = DateTime::from_unix(seconds);
            assert_eq!(
                dt,
                DateTime {
                    year,
                    month,
                    day,
                    hour,
                    minute,
                    second
                }
            );
            assert_eq!(dt.to_unix(), seconds);
            assert_eq!(dt.weekday(), weekday, "{dt:?}");
        }
    }
}
