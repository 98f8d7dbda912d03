//! Domain types: parse at the door, then trust the type.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::EventError;

/// A project id: the CloudEvent `subject` of every project-scoped event and a NATS subject token,
/// so it is restricted to `[A-Za-z0-9][A-Za-z0-9_-]{0,63}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ProjectId(String);

impl ProjectId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, EventError> {
        let mut bytes = s.bytes();
        let ok_first = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
        let ok_rest = bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok_first && ok_rest && s.len() <= Self::MAX_LEN {
            Ok(Self(s.to_owned()))
        } else {
            Err(EventError::new(
                "invalid_project",
                format!(
                    "project id {s:?} must be 1-64 characters of letters, digits, '_' or '-', starting with a letter or digit"
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ProjectId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A JetStream stream sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamSeq(pub u64);

impl fmt::Display for StreamSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A CloudEvent type such as `kairos.llm.call.completed.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct EventType(String);

impl EventType {
    pub const MAX_LEN: usize = 200;

    pub fn parse(s: &str) -> Result<Self, EventError> {
        if s.is_empty() || s.len() > Self::MAX_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(EventError::field(
                "invalid_attribute",
                "type",
                "type must be 1-200 printable ASCII characters without spaces",
            ));
        }
        let t = Self(s.to_owned());
        if s.starts_with("kairos.") {
            let cat = t.category();
            let valid = !cat.is_empty()
                && cat
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid || s.split('.').count() < 4 {
                return Err(EventError::field(
                    "invalid_attribute",
                    "type",
                    "Kairos types are named kairos.<category>.<what>.v<N> with a lowercase category",
                ));
            }
        }
        Ok(t)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The NATS subject token of this type: `access` for the identity events (members, roles
    /// and keys are one aggregate, so its commands append to one subject with an expected last
    /// sequence), the second dot-token of any other `kairos.` type, `ext` for every foreign type.
    pub fn category(&self) -> &str {
        if crate::catalogue::is_identity(&self.0) {
            return "access";
        }
        self.name_category()
    }

    /// The category an earlier layout stored this type under, where it differs from
    /// [`EventType::category`]: identity events were kept under their own name's token
    /// (`member`, `role`, `api_key`). Such stored events still belong where they are.
    pub fn legacy_category(&self) -> Option<&str> {
        let own = self.name_category();
        (own != self.category()).then_some(own)
    }

    /// The second dot-token of a `kairos.` type, `ext` for every foreign type.
    fn name_category(&self) -> &str {
        match self.0.strip_prefix("kairos.") {
            Some(rest) => rest.split('.').next().unwrap_or(""),
            None => "ext",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Exact US dollars, in nano-dollars (1e-9 USD).
///
/// Per-token prices are fractions of a micro-dollar, so nano-dollars keep a single call exact;
/// sums stay far inside `i64` (±9.2 billion USD). Never built from a float.
///
/// ```
/// use kairos_events::Money;
/// let m = Money::parse("0.0000015").unwrap();
/// assert_eq!(m.nanos(), 1_500);
/// assert_eq!(Money::parse("10").unwrap().to_string(), "10.00");
/// assert_eq!(Money::parse("1.5e-3").unwrap().to_string(), "0.0015");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("{0:?} is not a decimal number")]
    NotDecimal(String),
    #[error("{0:?} is negative; amounts are never negative")]
    Negative(String),
    #[error("{0:?} has more than 9 decimal places; Kairos keeps money exact to 1e-9 USD")]
    TooPrecise(String),
    #[error("{0:?} is larger than the 1,000,000,000 USD Kairos accepts for one amount")]
    TooLarge(String),
}

impl Money {
    pub const SCALE: i64 = 1_000_000_000;
    pub const MAX: Money = Money(1_000_000_000 * Self::SCALE);
    pub const ZERO: Money = Money(0);

    pub const fn from_nanos(nanos: i64) -> Self {
        Self(nanos)
    }

    pub const fn nanos(self) -> i64 {
        self.0
    }

    /// Parses a non-negative decimal as written in JSON (`12.5`, `"0.0123"`, `1.5e-6`), exactly.
    pub fn parse(text: &str) -> Result<Self, MoneyError> {
        let not_decimal = || MoneyError::NotDecimal(text.to_owned());
        let t = text.trim();
        if t.starts_with('-') {
            return Err(MoneyError::Negative(text.to_owned()));
        }
        let (mantissa, exp) = match t.find(['e', 'E']) {
            Some(i) => {
                let e: i32 = t[i + 1..].parse().map_err(|_| not_decimal())?;
                (&t[..i], e)
            }
            None => (t, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty()
            || !all_digits(int)
            || !all_digits(frac)
            || (mantissa.contains('.') && frac.is_empty())
        {
            return Err(not_decimal());
        }
        // value = digits * 10^(exp - frac.len()); in nanos: digits * 10^(9 + exp - frac.len()),
        // where digits are the integer and fraction digits one after the other, leading zeros
        // dropped (read in place: this runs for every amount of every event).
        let all = int.bytes().chain(frac.bytes());
        let lead = all.clone().take_while(|b| *b == b'0').count();
        let n = int.len() + frac.len() - lead;
        if n == 0 {
            return Ok(Money::ZERO);
        }
        let shift = 9 + i64::from(exp) - frac.len() as i64;
        let (keep, shift) = if shift < 0 {
            // Digits below a nano are allowed only when they are zeros.
            let cut = usize::try_from(-shift).unwrap_or(usize::MAX);
            if cut > n || !all.clone().skip(lead + n - cut).all(|b| b == b'0') {
                return Err(MoneyError::TooPrecise(text.to_owned()));
            }
            (n - cut, 0)
        } else {
            (n, shift)
        };
        let too_large = || MoneyError::TooLarge(text.to_owned());
        if keep as i64 + shift > 19 {
            return Err(too_large());
        }
        // At most 19 digits: no overflow.
        let base = all
            .skip(lead)
            .take(keep)
            .fold(0i128, |acc, b| acc * 10 + i128::from(b - b'0'));
        let nanos = base
            .checked_mul(10i128.pow(shift as u32))
            .ok_or_else(too_large)?;
        if nanos > i128::from(Self::MAX.0) {
            return Err(too_large());
        }
        Ok(Money(nanos as i64))
    }

    /// Reads an amount from a JSON value: a decimal string or a number, from its text.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, MoneyError> {
        match value {
            serde_json::Value::String(s) => Self::parse(s),
            serde_json::Value::Number(n) => Self::parse(&n.to_string()),
            other => Err(MoneyError::NotDecimal(other.to_string())),
        }
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).map(Money)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let int = abs / Self::SCALE as u64;
        let frac = format!("{:09}", abs % Self::SCALE as u64);
        let frac = frac.trim_end_matches('0');
        write!(f, "{sign}{int}.{frac:0<2}")
    }
}

impl FromStr for Money {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Through `Value` so that a JSON number arrives as its text (serde_json's
        // `arbitrary_precision`), never as an f64.
        let v = serde_json::Value::deserialize(d)?;
        Self::from_json(&v).map_err(serde::de::Error::custom)
    }
}

/// A budget period: one calendar month in the configured time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    year: i32,
    month: u32,
}

impl Period {
    /// The month that contains `at`, as seen in time zone `tz`.
    pub fn containing<Tz: TimeZone>(at: DateTime<Utc>, tz: &Tz) -> Self {
        let local = at.with_timezone(tz);
        Self {
            year: local.year(),
            month: local.month(),
        }
    }

    /// The first instant of the month in time zone `tz` (its local midnight on the 1st; in a
    /// zone whose clocks skip midnight, the first local time that exists).
    pub fn start<Tz: TimeZone>(&self, tz: &Tz) -> DateTime<Utc> {
        let first = NaiveDate::from_ymd_opt(self.year, self.month, 1).unwrap_or_default();
        (0..24 * 60)
            .find_map(|m| {
                let local = first.and_hms_opt(0, 0, 0)? + chrono::TimeDelta::minutes(m);
                tz.from_local_datetime(&local).earliest()
            })
            .map_or_else(
                || first.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc(),
                |t| t.with_timezone(&Utc),
            )
    }

    pub fn parse(s: &str) -> Result<Self, EventError> {
        let bad = || {
            EventError::new(
                "invalid_period",
                format!("period {s:?} must look like 2026-11"),
            )
        };
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        NaiveDate::from_ymd_opt(year, month, 1).ok_or_else(bad)?;
        Ok(Self { year, month })
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl Serialize for Period {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_reads_text_exactly() {
        let cases = [
            ("0", 0),
            ("0.1", 100_000_000),
            ("12.345678901", 12_345_678_901),
            ("0.000000001", 1),
            ("1e-9", 1),
            ("1.5E-6", 1_500),
            ("2e3", 2_000_000_000_000),
            ("1000000000", 1_000_000_000_000_000_000),
            ("0.10000000000", 100_000_000),
            ("0000.5", 500_000_000),
            ("10e-10", 1),
            ("0.0e-30", 0),
            ("00012.000000000000000", 12_000_000_000),
        ];
        for (text, nanos) in cases {
            assert_eq!(Money::parse(text).map(Money::nanos), Ok(nanos), "{text}");
        }
    }

    #[test]
    fn money_refuses_what_it_cannot_keep_exactly() {
        assert!(matches!(
            Money::parse("0.0000000001"),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(matches!(
            Money::parse("1e-10"),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(matches!(
            Money::parse("12e-10"),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(matches!(
            Money::parse("1e-2147483648"),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(matches!(Money::parse("-1"), Err(MoneyError::Negative(_))));
        assert!(matches!(
            Money::parse("1000000000.000000001"),
            Err(MoneyError::TooLarge(_))
        ));
        assert!(matches!(
            Money::parse("1e400"),
            Err(MoneyError::TooLarge(_))
        ));
        for bad in [
            "", ".", "1.", ".5", "abc", "1,5", "0x10", "NaN", "1e", "1.2.3", "+1",
        ] {
            assert!(
                matches!(Money::parse(bad), Err(MoneyError::NotDecimal(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn money_displays_trimmed_with_cents() {
        assert_eq!(Money::from_nanos(10 * Money::SCALE).to_string(), "10.00");
        assert_eq!(Money::from_nanos(12_300_000).to_string(), "0.0123");
        assert_eq!(Money::from_nanos(-1_500_000_000).to_string(), "-1.50");
        assert_eq!(Money::from_nanos(1).to_string(), "0.000000001");
    }

    #[test]
    fn money_round_trips_through_its_display() {
        for n in [
            0,
            1,
            999,
            1_000_000_000,
            123_456_789_012,
            Money::MAX.nanos(),
        ] {
            let m = Money::from_nanos(n);
            assert_eq!(Money::parse(&m.to_string()), Ok(m));
        }
    }

    #[test]
    fn json_number_is_read_from_its_text() {
        let v: serde_json::Value = serde_json::from_str("{\"c\": 0.30000000000000004}").unwrap();
        assert!(matches!(
            Money::from_json(&v["c"]),
            Err(MoneyError::TooPrecise(_))
        ));
        let v: serde_json::Value = serde_json::from_str("{\"c\": 123456789.123456789}").unwrap();
        assert_eq!(
            Money::from_json(&v["c"]).map(Money::nanos),
            Ok(123_456_789_123_456_789)
        );
    }

    #[test]
    fn project_ids_are_subject_tokens() {
        for ok in ["a", "proj-1", "P_2", &"x".repeat(64)] {
            assert!(ProjectId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a.b", "a b", "a*", "a>", &"x".repeat(65), "é"] {
            assert!(ProjectId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn identity_events_share_the_access_category() {
        for ty in crate::CATALOGUE.iter().filter(|s| s.identity).map(|s| s.ty) {
            let t = EventType::parse(ty).unwrap();
            assert_eq!(t.category(), "access", "{ty}");
            assert_ne!(t.legacy_category(), None, "{ty}");
        }
        let t = EventType::parse("kairos.budget.set.v1").unwrap();
        assert_eq!((t.category(), t.legacy_category()), ("budget", None));
    }

    #[test]
    fn event_type_category() {
        let t = EventType::parse("kairos.llm.call.completed.v1").unwrap();
        assert_eq!(t.category(), "llm");
        assert_eq!(
            EventType::parse("com.example.thing").unwrap().category(),
            "ext"
        );
        assert!(EventType::parse("kairos.LLM.x.v1").is_err());
        assert!(EventType::parse("kairos.llm").is_err());
        assert!(EventType::parse("has space").is_err());
    }

    #[test]
    fn period_follows_the_time_zone() {
        let at: DateTime<Utc> = "2026-11-30T23:30:00Z".parse().unwrap();
        assert_eq!(Period::containing(at, &Utc).to_string(), "2026-11");
        let plus_one = chrono::FixedOffset::east_opt(3600).unwrap();
        assert_eq!(Period::containing(at, &plus_one).to_string(), "2026-12");
        assert!(Period::parse("2026-13").is_err());
        assert_eq!(Period::parse("2026-01").unwrap().to_string(), "2026-01");
    }
}
