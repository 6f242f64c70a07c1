//! A pipeline timer's spec: a Quartz cron expression, as GoCD reads `timer.spec`. It is
//! parsed once, when the config is read, so a spec GoCD would refuse is refused there (422)
//! and the timer loop only ever holds specs it can evaluate.
//!
//! Quartz's fields, seconds first: second, minute, hour, day of month, month (1–12 or
//! JAN–DEC), day of week (1–7 = SUN–SAT, or names) and an optional year; each takes `*`,
//! values, ranges, lists and `/` steps. As Quartz, exactly one of day of month and day of week
//! is `?` ("no specific value"). Refused, with a message saying so: Quartz's `L` (last),
//! `W` (nearest weekday), `#` (nth weekday) and `C` (calendar) — the `cron` crate that
//! evaluates the rest has no equivalent, and a timer that silently fired on other days would
//! be worse than one refused. Fire times are in the server's time zone, as GoCD's.

use std::str::FromStr;

use chrono::{Local, TimeZone};

/// A parsed `timer.spec`.
#[derive(Debug, Clone)]
pub struct TimerSpec {
    text: String,
    schedule: cron::Schedule,
}

/// Day-of-week names, which hold letters that are Quartz specials elsewhere (`W` in WED).
const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl TimerSpec {
    /// Reads `text` as Quartz does, or says what is wrong with it.
    pub fn parse(text: &str) -> Result<TimerSpec, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if !(6..=7).contains(&fields.len()) {
            return Err(format!(
                "timer spec `{text}` has {} fields; a Quartz cron spec has 6 or 7, seconds first",
                fields.len()
            ));
        }
        let day_of_month = fields[3].to_ascii_uppercase();
        let mut day_of_week = fields[5].to_ascii_uppercase();
        for name in DAY_NAMES {
            day_of_week = day_of_week.replace(name, "");
        }
        let refused =
            |field: &str, specials: &[char]| specials.iter().find(|c| field.contains(**c)).copied();
        if let Some(special) = refused(&day_of_month, &['L', 'W', 'C'])
            .or_else(|| refused(&day_of_week, &['L', '#', 'C']))
        {
            return Err(format!(
                "timer spec `{text}` uses Quartz's `{special}`, which ferrocd does not support \
                 (nor `L`, `W`, `#` or `C`): name the days instead"
            ));
        }
        match (fields[3] == "?", fields[5] == "?") {
            (true, false) | (false, true) => {}
            _ => {
                return Err(format!(
                    "timer spec `{text}`: exactly one of day of month (4th field) and day of \
                     week (6th) must be `?`, as Quartz asks"
                ));
            }
        }
        if let Some(year) = fields.get(6) {
            let out_of_range = year
                .split([',', '-', '/'])
                .filter_map(|y| y.parse::<u32>().ok())
                .find(|y| !(1970..=2099).contains(y));
            if let Some(y) = out_of_range {
                return Err(format!(
                    "timer spec `{text}`: year {y} is outside Quartz's 1970–2099"
                ));
            }
        }
        let schedule = cron::Schedule::from_str(text)
            .map_err(|e| format!("timer spec `{text}` is not a Quartz cron spec: {e}"))?;
        Ok(TimerSpec {
            text: text.to_string(),
            schedule,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first fire time strictly after `after_millis` (Unix milliseconds), if any is left.
    pub fn next_after(&self, after_millis: i64) -> Option<i64> {
        let after = Local.timestamp_millis_opt(after_millis).single()?;
        self.schedule
            .after(&after)
            .next()
            .map(|at| at.timestamp_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, NaiveDate, Timelike};

    fn millis(y: i32, m: u32, d: u32, h: u32, min: u32, s: u32) -> i64 {
        let naive = NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(h, min, s)
            .unwrap();
        Local
            .from_local_datetime(&naive)
            .single()
            .unwrap()
            .timestamp_millis()
    }

    fn local(ms: i64) -> chrono::DateTime<Local> {
        Local.timestamp_millis_opt(ms).single().unwrap()
    }

    #[test]
    fn weekday_evenings_skip_the_weekend() {
        let spec = TimerSpec::parse("0 0 22 ? * MON-FRI").unwrap();
        // Saturday 2026-12-05 at noon: the next firing is Monday 22:00.
        let next = local(spec.next_after(millis(2026, 12, 5, 12, 0, 0)).unwrap());
        assert_eq!(
            (next.month(), next.day(), next.hour(), next.minute()),
            (12, 7, 22, 0)
        );
        assert_eq!(next.weekday(), chrono::Weekday::Mon);
        // Strictly after: at 22:00 on Monday the next is Tuesday's.
        let after = local(spec.next_after(next.timestamp_millis()).unwrap());
        assert_eq!((after.day(), after.hour()), (8, 22));
    }

    #[test]
    fn quartz_numbers_days_from_sunday() {
        // Quartz's 2 is Monday (cron's would be Tuesday).
        let spec = TimerSpec::parse("0 30 9 ? * 2").unwrap();
        let next = local(spec.next_after(millis(2026, 12, 2, 0, 0, 0)).unwrap());
        assert_eq!(next.weekday(), chrono::Weekday::Mon);
        assert_eq!((next.day(), next.hour(), next.minute()), (7, 9, 30));
    }

    #[test]
    fn seconds_steps_and_years() {
        let spec = TimerSpec::parse("*/15 * * * * ?").unwrap();
        let from = millis(2026, 12, 2, 10, 0, 7);
        assert_eq!(spec.next_after(from), Some(millis(2026, 12, 2, 10, 0, 15)));
        let seven = TimerSpec::parse("0 0 12 1 JAN ? 2027").unwrap();
        assert_eq!(seven.next_after(from), Some(millis(2027, 1, 1, 12, 0, 0)));
        // No firing left: the year is past.
        let past = TimerSpec::parse("0 0 12 1 JAN ? 2020").unwrap();
        assert_eq!(past.next_after(from), None);
    }

    #[test]
    fn refused_specs_say_why() {
        for (spec, says) in [
            ("* * *", "6 or 7"),
            ("0 0 12 L * ?", "`L`"),
            ("0 0 12 15W * ?", "`W`"),
            ("0 0 12 ? * 6#3", "`#`"),
            ("0 0 12 ? * 6L", "`L`"),
            ("0 0 12 * * MON", "exactly one"),
            ("0 0 12 ? * ?", "exactly one"),
            ("0 0 12 1 * ? 2100", "1970–2099"),
            ("0 0 25 * * ?", "not a Quartz cron spec"),
            ("0 0 12 ? * FUNDAY", "not a Quartz cron spec"),
        ] {
            let error = TimerSpec::parse(spec).expect_err(spec);
            assert!(error.contains(says), "{spec}: {error}");
        }
        // Day names holding W, C or L letters are days, not specials.
        assert!(TimerSpec::parse("0 0 12 ? * WED,SAT").is_ok());
        assert!(TimerSpec::parse("0 0 12 ? JUL-DEC SUN").is_ok());
    }
}
