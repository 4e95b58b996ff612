//! How numbers read in `top`, the quick start and log lines: short, fixed-meaning and never
//! wider than they must be, so that a column keeps its width from one refresh to the next.

/// A count: `12345`, then `1.23M` from ten million up (a column stays at most 7 wide).
pub fn count(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let magnitude = value.abs();
    if magnitude >= 1e10 {
        format!("{:.2}G", value / 1e9)
    } else if magnitude >= 1e7 {
        format!("{:.2}M", value / 1e6)
    } else {
        format!("{value:.0}")
    }
}

/// A rate per second: `–` before there is one, one decimal below 10, whole numbers above.
pub fn rate(value: Option<f64>) -> String {
    match value {
        None => "–".to_owned(),
        Some(v) if v.abs() < 10.0 && v != 0.0 => format!("{v:.1}"),
        Some(v) => count(v),
    }
}

/// A duration in seconds: `850µs`, `12ms`, `1.5s`, `2m05s`, `3h10m`; `–` when unknown.
pub fn seconds(value: Option<f64>) -> String {
    let Some(s) = value.filter(|s| s.is_finite()) else {
        return "–".to_owned();
    };
    if s < 0.001 {
        format!("{:.0}µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.0}ms", s * 1e3)
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

/// An optional gauge as a count, `–` when absent.
pub fn gauge(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_short() {
        let counts = [
            (0.0, "0"),
            (901.0, "901"),
            (9_999_999.0, "9999999"),
            (12_345_678.0, "12.35M"),
            (98_765_432_100.0, "98.77G"),
        ];
        for (value, want) in counts {
            assert_eq!(count(value), want);
        }
        let rates = [
            (None, "–"),
            (Some(0.0), "0"),
            (Some(0.25), "0.2"),
            (Some(9.96), "10.0"),
            (Some(900.4), "900"),
        ];
        for (value, want) in rates {
            assert_eq!(rate(value), want, "{value:?}");
        }
        let durations = [
            (None, "–"),
            (Some(0.000_85), "850µs"),
            (Some(0.012), "12ms"),
            (Some(1.54), "1.5s"),
            (Some(125.0), "2m05s"),
            (Some(11_400.0), "3h10m"),
            (Some(f64::INFINITY), "–"),
        ];
        for (value, want) in durations {
            assert_eq!(seconds(value), want, "{value:?}");
        }
        assert_eq!(gauge(None), "–");
        assert_eq!(gauge(Some(3.0)), "3");
    }
}
