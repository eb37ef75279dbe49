//! The overview's charts, drawn server-side as SVG with plotters (its SVG backend; no
//! script, no fonts loaded: text is SVG text). Each function takes the series already
//! bucketed (`Minutes`) and returns the SVG markup; a chart that cannot be drawn is
//! logged and left out, never a failed page.

use chrono::{DateTime, Duration, Utc};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

/// Drawn size (the page scales it to its width).
const WIDTH: u32 = 520;
const HEIGHT: u32 = 240;

/// Per-minute buckets over the last `count` minutes up to `now`: index 0 is the oldest
/// minute, the last index the current one.
#[derive(Debug, Clone, Copy)]
pub struct Minutes {
    pub now: DateTime<Utc>,
    pub count: usize,
}

impl Minutes {
    /// The bucket `at` falls in, if it is within the window.
    pub fn bucket(&self, at: DateTime<Utc>) -> Option<usize> {
        let ago = (self.now - at).num_seconds();
        if ago < 0 {
            return Some(self.count - 1);
        }
        let minutes_ago = usize::try_from(ago / 60).ok()?;
        (minutes_ago < self.count).then(|| self.count - 1 - minutes_ago)
    }

    pub fn start(&self) -> DateTime<Utc> {
        self.now - Duration::minutes(self.count as i64)
    }

    /// Sums of `value` per minute.
    pub fn sums<T>(&self, items: impl IntoIterator<Item = T>, at: impl Fn(&T) -> DateTime<Utc>, value: impl Fn(&T) -> f64) -> Vec<f64> {
        let mut sums = vec![0.0; self.count];
        for item in items {
            if let Some(i) = self.bucket(at(&item)) {
                sums[i] += value(&item);
            }
        }
        sums
    }

    /// The `q` quantile (0–1, nearest rank) of the values of each minute (0 where none).
    pub fn quantiles(&self, items: &[(DateTime<Utc>, f64)], q: f64) -> Vec<f64> {
        let mut per: Vec<Vec<f64>> = vec![Vec::new(); self.count];
        for (at, value) in items {
            if let Some(i) = self.bucket(*at) {
                per[i].push(*value);
            }
        }
        per.into_iter()
            .map(|mut values| {
                if values.is_empty() {
                    return 0.0;
                }
                values.sort_by(f64::total_cmp);
                let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
                values[rank - 1]
            })
            .collect()
    }
}

/// One line of a chart.
pub struct Line<'a> {
    pub name: &'a str,
    pub color: RGBColor,
    pub values: Vec<f64>,
}

pub const BLUE_LINE: RGBColor = RGBColor(43, 108, 176);
pub const GREEN_LINE: RGBColor = RGBColor(31, 122, 58);
pub const RED_LINE: RGBColor = RGBColor(160, 29, 29);
pub const AMBER_LINE: RGBColor = RGBColor(138, 90, 0);

fn drawn(result: Result<(), String>, svg: String, title: &str) -> Option<String> {
    match result {
        Ok(()) => Some(svg),
        Err(error) => {
            tracing::warn!(chart = title, %error, "overview chart not drawn");
            None
        }
    }
}

/// Lines over the minutes of the window (x: minutes ago, 0 = now).
pub fn lines(title: &str, y_desc: &str, lines: &[Line<'_>]) -> Option<String> {
    let count = lines.first().map_or(0, |l| l.values.len()) as i32;
    let mut svg = String::new();
    let result = (|| -> Result<(), String> {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let top = lines.iter().flat_map(|l| l.values.iter().copied()).fold(0.0, f64::max).max(1.0) * 1.15;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(44)
            .build_cartesian_2d(-(count - 1)..0, 0.0..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("minutes ago")
            .y_desc(y_desc)
            .x_label_formatter(&|x| (-x).to_string())
            .draw()
            .map_err(|e| e.to_string())?;
        for line in lines {
            let color = line.color;
            let points = line.values.iter().enumerate().map(|(i, v)| (i as i32 - (count - 1), *v));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(line.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        }
        chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())
    })();
    drawn(result, svg, title)
}

/// One bar per category; with `of`, each bar is drawn over a lighter bar of its
/// capacity (running over slots).
pub fn bars(title: &str, categories: &[String], values: &[i64], of: Option<&[i64]>) -> Option<String> {
    let mut svg = String::new();
    let result = (|| -> Result<(), String> {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let top = values.iter().chain(of.unwrap_or_default()).copied().max().unwrap_or(0).max(1);
        let n = categories.len().max(1) as i32;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(44)
            .build_cartesian_2d((0..n).into_segmented(), 0..top + top / 5 + 1)
            .map_err(|e| e.to_string())?;
        let label = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) => categories.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        chart.configure_mesh().disable_x_mesh().x_label_formatter(&label).draw().map_err(|e| e.to_string())?;
        let bar = |i: usize, v: i64, style: ShapeStyle| {
            let x = i as i32;
            let mut r = Rectangle::new([(SegmentValue::Exact(x), 0), (SegmentValue::Exact(x + 1), v)], style);
            r.set_margin(0, 0, 12, 12);
            r
        };
        if let Some(capacity) = of {
            chart
                .draw_series(capacity.iter().enumerate().map(|(i, v)| bar(i, *v, BLUE_LINE.mix(0.25).filled())))
                .map_err(|e| e.to_string())?
                .label("slots")
                .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], BLUE_LINE.mix(0.25).filled()));
        }
        chart
            .draw_series(values.iter().enumerate().map(|(i, v)| bar(i, *v, BLUE_LINE.filled())))
            .map_err(|e| e.to_string())?
            .label(if of.is_some() { "running" } else { "queued" })
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], BLUE_LINE.filled()));
        chart.configure_series_labels().position(SeriesLabelPosition::UpperRight).background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())
    })();
    drawn(result, svg, title)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minutes_ago: i64, seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("time") - Duration::minutes(minutes_ago) - Duration::seconds(seconds)
    }

    #[test]
    fn values_fall_in_their_minute_and_quantiles_take_the_nearest_rank() {
        let window = Minutes { now: at(0, 0), count: 3 };
        let sums = window.sums([(at(0, 5), 1.0), (at(0, 50), 2.0), (at(2, 1), 4.0), (at(3, 1), 8.0)], |x| x.0, |x| x.1);
        assert_eq!(sums, [4.0, 0.0, 3.0], "the oldest minute first; older than the window is left out");
        let values: Vec<(DateTime<Utc>, f64)> = (1..=20).map(|v| (at(0, 1), f64::from(v))).collect();
        assert_eq!(window.quantiles(&values, 0.5), [0.0, 0.0, 10.0]);
        assert_eq!(window.quantiles(&values, 0.95), [0.0, 0.0, 19.0]);
    }

    #[test]
    fn charts_are_svg_with_their_labels() {
        let svg = lines("jobs", "jobs", &[Line { name: "completed", color: GREEN_LINE, values: vec![0.0, 2.0, 1.0] }]).expect("drawn");
        assert!(svg.starts_with("<svg") && svg.contains("completed"), "{svg}");
        let svg = bars("plans", &["basic".into(), "pro".into()], &[1, 3], Some(&[4, 8])).expect("drawn");
        assert!(svg.contains("pro") && svg.contains("slots"), "{svg}");
    }
}
