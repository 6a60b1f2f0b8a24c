//! The maintenance window of `[lifecycle]`: the days and hours, in the host's time zone, in
//! which the daemon may disrupt the node by itself (drain, upgrade, reboot, refresh).
//!
//! Written as `DAYS HH:MM-HH:MM`: DAYS is `daily`, or day names (`Mon` … `Sun`, any case, three
//! letters or full) separated by commas, with ranges (`Mon-Fri`, `Sat,Sun`, `Fri-Mon` wraps the
//! week). The hours are the start and the end; an end at or before the start runs past midnight
//! into the next day (`Sat 22:00-02:00` is Saturday 22:00 to Sunday 02:00), and `24:00` is the
//! end of the day (`daily 00:00-24:00`: always).

use serde::Serialize;

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const FULL_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// A weekly window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Days the window starts on, Monday first.
    days: [bool; 7],
    /// Minutes after midnight.
    start: u16,
    /// Minutes after midnight, 1..=1440; at or before `start`: the next day.
    end: u16,
}

impl Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let days: Vec<&str> = if self.days.iter().all(|d| *d) {
            vec!["daily"]
        } else {
            const SHOWN: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
            (0..7).filter(|i| self.days[*i]).map(|i| SHOWN[i]).collect()
        };
        write!(
            f,
            "{} {:02}:{:02}-{:02}:{:02}",
            days.join(","),
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

impl Window {
    /// Every day, all day.
    pub const ALWAYS: Window = Window {
        days: [true; 7],
        start: 0,
        end: 1440,
    };

    pub fn parse(text: &str) -> Result<Window, String> {
        let example = "write days and hours, e.g. \"Sat,Sun 02:00-06:00\", \"Mon-Fri 22:00-04:00\" or \"daily 00:00-24:00\"";
        let (days, hours) = text
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("`{text}` has no hours; {example}"))?;
        let mut set = [false; 7];
        if days.eq_ignore_ascii_case("daily") || days == "*" {
            set = [true; 7];
        } else {
            for part in days.split(',') {
                let (a, b) = match part.split_once('-') {
                    Some((a, b)) => (day(a, example)?, day(b, example)?),
                    None => {
                        let d = day(part, example)?;
                        (d, d)
                    }
                };
                let mut i = a;
                loop {
                    set[i] = true;
                    if i == b {
                        break;
                    }
                    i = (i + 1) % 7;
                }
            }
        }
        let (start, end) = hours
            .trim()
            .split_once('-')
            .ok_or_else(|| format!("`{hours}` is not a range of hours; {example}"))?;
        let start = minute(start, false, example)?;
        let end = minute(end, true, example)?;
        if start == end && end != 1440 {
            return Err(format!(
                "`{hours}` starts and ends at the same time; {example}"
            ));
        }
        Ok(Window {
            days: set,
            start,
            end,
        })
    }

    /// Whether a local time (`weekday` 0 = Monday, `minute` after midnight) is inside.
    pub fn contains(&self, weekday: usize, minute: u16) -> bool {
        let weekday = weekday % 7;
        let yesterday = (weekday + 6) % 7;
        if self.end > self.start {
            self.days[weekday] && minute >= self.start && minute < self.end
        } else {
            (self.days[weekday] && minute >= self.start)
                || (self.days[yesterday] && minute < self.end)
        }
    }

    /// Whole minutes from a local time until the window is next open: 0 when it is open now.
    pub fn minutes_until_open(&self, weekday: usize, minute: u16) -> u32 {
        let mut day = weekday % 7;
        let mut m = minute.min(1439);
        // A window opens at least once a week (parse refuses an empty one).
        for waited in 0..7 * 1440u32 {
            if self.contains(day, m) {
                return waited;
            }
            m += 1;
            if m == 1440 {
                m = 0;
                day = (day + 1) % 7;
            }
        }
        7 * 1440
    }
}

fn day(name: &str, example: &str) -> Result<usize, String> {
    let lower = name.trim().to_ascii_lowercase();
    DAY_NAMES
        .iter()
        .position(|d| *d == lower)
        .or_else(|| FULL_NAMES.iter().position(|d| *d == lower))
        .ok_or_else(|| format!("`{name}` is not a day; {example}"))
}

fn minute(hhmm: &str, end: bool, example: &str) -> Result<u16, String> {
    let bad = || format!("`{hhmm}` is not a time of day (HH:MM); {example}");
    let (h, m) = hhmm.trim().split_once(':').ok_or_else(bad)?;
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    if m > 59 || h > 24 || (h == 24 && (m != 0 || !end)) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn minutes_until_the_window_opens() {
        let w = Window::parse("Sat 22:00-02:00").unwrap();
        // Saturday 21:30: half an hour; inside (Sunday 01:00): none; Sunday 02:00: six days
        // and twenty hours.
        assert_eq!(w.minutes_until_open(5, 21 * 60 + 30), 30);
        assert_eq!(w.minutes_until_open(6, 60), 0);
        assert_eq!(w.minutes_until_open(6, 120), 6 * 1440 + 20 * 60);
        assert_eq!(Window::ALWAYS.minutes_until_open(3, 777), 0);
        let w = Window::parse("Mon-Fri 09:00-17:00").unwrap();
        // Friday 17:00 to Monday 09:00.
        assert_eq!(w.minutes_until_open(4, 17 * 60), 2 * 1440 + 16 * 60);
    }

    #[test]
    fn days_and_hours() {
        let w = Window::parse("Sat,Sun 02:00-06:00").unwrap();
        assert!(w.contains(5, 120) && w.contains(6, 359));
        assert!(!w.contains(5, 360) && !w.contains(4, 200) && !w.contains(5, 119));
        assert_eq!(w.to_string(), "Sat,Sun 02:00-06:00");
        let weekdays = Window::parse("mon-FRIDAY 22:30-04:00").unwrap();
        assert!(weekdays.contains(0, 23 * 60));
        assert!(
            weekdays.contains(1, 3 * 60),
            "Monday's window runs into Tuesday"
        );
        assert!(weekdays.contains(5, 60), "Friday's runs into Saturday");
        assert!(
            !weekdays.contains(0, 60),
            "Sunday has no window to run over"
        );
        assert!(!weekdays.contains(6, 23 * 60));
        let wrap = Window::parse("Fri-Mon 00:00-24:00").unwrap();
        assert_eq!(wrap.to_string(), "Mon,Fri,Sat,Sun 00:00-24:00");
        assert!(wrap.contains(6, 0) && wrap.contains(0, 1439) && !wrap.contains(2, 600));
        let always = Window::parse("daily 00:00-24:00").unwrap();
        assert_eq!(always, Window::ALWAYS);
        assert!((0..7).all(|d| always.contains(d, 0) && always.contains(d, 1439)));
    }

    #[test]
    fn bad_windows_say_what_is_wrong() {
        for (text, says) in [
            ("Sat", "has no hours"),
            ("Sat 02:00", "not a range of hours"),
            ("Someday 02:00-03:00", "`Someday` is not a day"),
            ("daily 2-3", "`2` is not a time of day"),
            ("daily 24:00-03:00", "`24:00` is not a time of day"),
            ("daily 01:60-03:00", "`01:60`"),
            ("daily 03:00-03:00", "starts and ends at the same time"),
        ] {
            let e = Window::parse(text).unwrap_err();
            assert!(e.contains(says) && e.contains("e.g."), "{text}: {e}");
        }
    }
}
