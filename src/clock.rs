//! Time: the [`Clock`] every layer reads, a [`FakeClock`] for tests, and the
//! UTC calendar arithmetic behind quota periods ([`UtcDate`]).
//!
//! Layers take an `Arc<dyn Clock>` at construction, so a test can advance time instead of
//! sleeping:
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use tower_nat::clock::{Clock, FakeClock, UtcDate};
//!
//! let clock = FakeClock::at_date(UtcDate::new(2025, 1, 31).unwrap());
//! let shared: Arc<dyn Clock> = Arc::new(clock.clone());
//! clock.advance(Duration::from_secs(86_400));
//! assert_eq!(UtcDate::from_unix(shared.now()).to_string(), "2025-02-01");
//! ```

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// A source of wall-clock time, as a duration since the Unix epoch (UTC).
///
/// Rate limiting tolerates a clock that steps backwards (it never admits extra because of it);
/// quota periods and key expiry are wall-clock by nature.
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    /// The current time since 1970-01-01T00:00:00Z.
    fn now(&self) -> Duration;
}

/// The shared clock handle every layer holds.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock ([`SystemTime::now`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
    }
}

/// The default clock handle: the system clock.
pub(crate) fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that only moves when told to. Clones share the same time, so a test keeps one
/// handle and gives clones to the layers.
#[derive(Clone, Debug, Default)]
pub struct FakeClock {
    nanos: Arc<AtomicU64>,
}

impl FakeClock {
    /// A clock standing at `since_epoch`.
    pub fn new(since_epoch: Duration) -> Self {
        Self {
            nanos: Arc::new(AtomicU64::new(duration_to_nanos(since_epoch))),
        }
    }

    /// A clock standing at 00:00:00Z on `date`.
    pub fn at_date(date: UtcDate) -> Self {
        Self::new(Duration::from_secs(date.unix_seconds()))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.nanos
            .fetch_add(duration_to_nanos(by), Ordering::SeqCst);
    }

    /// Sets the clock to `since_epoch` (forwards or backwards).
    pub fn set(&self, since_epoch: Duration) {
        self.nanos
            .store(duration_to_nanos(since_epoch), Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

fn duration_to_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A calendar date in UTC (proleptic Gregorian), as used for quota periods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcDate {
    year: i32,
    month: u8,
    day: u8,
}

impl UtcDate {
    /// The date `year-month-day`, or `None` if no such day exists.
    pub fn new(year: i32, month: u8, day: u8) -> Option<Self> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        Some(Self { year, month, day })
    }

    /// The UTC date that contains the instant `since_epoch`.
    pub fn from_unix(since_epoch: Duration) -> Self {
        let days = (since_epoch.as_secs() / 86_400) as i64;
        civil_from_days(days)
    }

    /// The year.
    pub fn year(self) -> i32 {
        self.year
    }

    /// The month, 1 to 12.
    pub fn month(self) -> u8 {
        self.month
    }

    /// The day of the month, from 1.
    pub fn day(self) -> u8 {
        self.day
    }

    /// The first day of this date's month.
    pub fn first_of_month(self) -> Self {
        Self { day: 1, ..self }
    }

    /// The first day of the month after this date's month.
    pub fn first_of_next_month(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
                day: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
                day: 1,
            }
        }
    }

    /// The day before this date.
    pub fn day_before(self) -> Self {
        civil_from_days(days_from_civil(self.year, self.month, self.day) - 1)
    }

    /// Seconds from the Unix epoch to 00:00:00Z on this date (0 for dates before 1970).
    pub fn unix_seconds(self) -> u64 {
        let days = days_from_civil(self.year, self.month, self.day);
        u64::try_from(days).map_or(0, |d| d * 86_400)
    }

    /// The instant 00:00:00Z on this date, as `YYYY-MM-DDT00:00:00Z`.
    pub fn midnight_rfc3339(self) -> String {
        format!("{self}T00:00:00Z")
    }
}

impl fmt::Display for UtcDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// An instant (time since the Unix epoch) as `YYYY-MM-DDTHH:MM:SSZ` (whole seconds).
pub fn rfc3339(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let date = UtcDate::from_unix(since_epoch);
    let of_day = secs % 86_400;
    format!(
        "{date}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// An instant written `YYYY-MM-DDTHH:MM:SSZ` (or with `+00:00`, and a fraction of a second,
/// which is kept), as time since the Unix epoch; `None` for anything else, or before 1970.
pub fn parse_rfc3339(text: &str) -> Option<Duration> {
    let text = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let number = |s: Option<&str>, len: usize| {
        s.filter(|s| s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u32>().ok())
    };
    let year = number(d.next(), 4)?;
    let month = number(d.next(), 2)?;
    let day = number(d.next(), 2)?;
    let (clock, fraction) = match time.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (time, None),
    };
    let mut t = clock.splitn(3, ':');
    let (h, m, sec) = (
        number(t.next(), 2)?,
        number(t.next(), 2)?,
        number(t.next(), 2)?,
    );
    if h > 23 || m > 59 || sec > 59 {
        return None;
    }
    let date = UtcDate::new(
        i32::try_from(year).ok()?,
        u8::try_from(month).ok()?,
        u8::try_from(day).ok()?,
    )?;
    if date.year() < 1970 {
        return None;
    }
    let nanos = match fraction {
        None => 0,
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
            f.parse::<u32>().ok()? * 10u32.pow(9 - f.len() as u32)
        }
        Some(_) => return None,
    };
    let secs = date.unix_seconds() + u64::from(h) * 3600 + u64::from(m) * 60 + u64::from(sec);
    Some(Duration::new(secs, nanos))
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Days since 1970-01-01 for a civil date; Howard Hinnant's `days_from_civil`.
fn days_from_civil(year: i32, month: u8, day: u8) -> i64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// The inverse of `days_from_civil`.
fn civil_from_days(days: i64) -> UtcDate {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    UtcDate { year, month, day }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_day_from_1970_to_2400() {
        let mut date = UtcDate::new(1970, 1, 1).unwrap();
        for days in 0..(430 * 366) {
            assert_eq!(days_from_civil(date.year, date.month, date.day), days);
            assert_eq!(civil_from_days(days), date);
            date = if date.day == days_in_month(date.year, date.month) {
                date.first_of_next_month()
            } else {
                UtcDate {
                    day: date.day + 1,
                    ..date
                }
            };
        }
    }

    #[test]
    fn instants_in_rfc3339() {
        let at = Duration::from_secs(UtcDate::new(2026, 3, 1).unwrap().unix_seconds() + 3_723);
        assert_eq!(rfc3339(at), "2026-03-01T01:02:03Z");
        assert_eq!(parse_rfc3339("2026-03-01T01:02:03Z"), Some(at));
        assert_eq!(parse_rfc3339("2026-03-01T01:02:03+00:00"), Some(at));
        assert_eq!(
            parse_rfc3339("2026-03-01T01:02:03.5Z"),
            Some(at + Duration::from_millis(500))
        );
        for bad in [
            "",
            "2026-03-01",
            "2026-03-01T01:02:03",
            "2026-02-30T00:00:00Z",
            "2026-03-01T24:00:00Z",
            "2026-03-01T01:02:03+01:00",
            "1969-12-31T23:59:59Z",
            "2026-3-01T01:02:03Z",
            "2026-03-01T01:02:03.Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn month_boundaries() {
        let d = UtcDate::new(2025, 12, 31).unwrap();
        assert_eq!(d.first_of_next_month().to_string(), "2026-01-01");
        let d = UtcDate::new(2024, 2, 29).unwrap();
        assert_eq!(d.first_of_next_month().to_string(), "2024-03-01");
        assert_eq!(d.first_of_next_month().day_before(), d);
        assert_eq!(
            UtcDate::new(2025, 1, 1).unwrap().day_before().to_string(),
            "2024-12-31"
        );
        assert!(UtcDate::new(2025, 2, 29).is_none());
        assert!(UtcDate::new(2100, 2, 29).is_none());
        assert!(UtcDate::new(2000, 2, 29).is_some());
        assert_eq!(
            UtcDate::new(2025, 2, 1).unwrap().midnight_rfc3339(),
            "2025-02-01T00:00:00Z"
        );
    }

    #[test]
    fn fake_clock_clones_share_time() {
        let clock = FakeClock::at_date(UtcDate::new(2025, 1, 31).unwrap());
        let other = clock.clone();
        clock.advance(Duration::from_secs(86_399));
        assert_eq!(UtcDate::from_unix(other.now()).to_string(), "2025-01-31");
        clock.advance(Duration::from_secs(1));
        assert_eq!(UtcDate::from_unix(other.now()).to_string(), "2025-02-01");
    }
}
