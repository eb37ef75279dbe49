//! Charts of the team pages and the operator console, drawn server-side as SVG with
//! plotters (its SVG backend; no script, no fonts loaded: text is SVG text). Each
//! function takes the series already bucketed (per minute: [`Minutes`]; per day:
//! `queries::credits::Days`) and returns the SVG markup; a chart that cannot be drawn is
//! logged and left out, never a failed page. The console's overview draws lines over
//! the last hour and bars per plan; the credits page draws stacked bars per day (with
//! each day's total written above its bar) and a line over days.

use chrono::{DateTime, Duration, Utc};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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
            tracing::warn!(chart = title, %error, "chart not drawn");
            None
        }
    }
}

/// Lines over the minutes of the window (x: minutes ago, 0 = now).
pub fn lines(title: &str, y_desc: &str, lines: &[Line<'_>]) -> Option<String> {
    let count = lines.first().map_or(0, |l| l.values.len()) as i32;
    // Index i of `count` is `count - 1 - i` minutes ago.
    lines_over(title, "minutes ago", &|i| (count - 1 - i).to_string(), y_desc, &|y| format!("{y:.1}"), lines)
}

/// Lines over one point per label (x: the labels in order, e.g. days), of whole numbers
/// (e.g. credits).
pub fn lines_by(title: &str, labels: &[String], y_desc: &str, lines: &[Line<'_>]) -> Option<String> {
    let x_label = |i: i32| usize::try_from(i).ok().and_then(|i| labels.get(i)).cloned().unwrap_or_default();
    lines_over(title, "", &x_label, y_desc, &whole, lines)
}

/// A y label of whole numbers.
fn whole(y: f64) -> String {
    format!("{y:.0}")
}

/// Lines over points 0..n, the x labels from `x_label`, the y labels from `y_label`.
fn lines_over(
    title: &str,
    x_desc: &str,
    x_label: &dyn Fn(i32) -> String,
    y_desc: &str,
    y_label: &dyn Fn(f64) -> String,
    lines: &[Line<'_>],
) -> Option<String> {
    let count = lines.first().map_or(0, |l| l.values.len()) as i32;
    let mut svg = String::new();
    let result = (|| -> Result<(), String> {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let top = lines.iter().flat_map(|l| l.values.iter().copied()).fold(0.0, f64::max).max(1.0) * 1.15;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(52)
            .build_cartesian_2d(0..(count - 1).max(1), 0.0..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_labels(count.clamp(2, 14) as usize)
            .x_label_style(("sans-serif", 11))
            .x_label_formatter(&|x| x_label(*x))
            .y_label_formatter(&|y| y_label(*y))
            .draw()
            .map_err(|e| e.to_string())?;
        for line in lines {
            let color = line.color;
            let points = line.values.iter().enumerate().map(|(i, v)| (i as i32, *v));
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

/// Stacked bars, one per label (e.g. a day), one layer per series (e.g. an operation),
/// each bar's total written above it (left out where it is 0).
pub fn stacked_bars(title: &str, labels: &[String], y_desc: &str, layers: &[Line<'_>]) -> Option<String> {
    let n = labels.len();
    let totals: Vec<f64> = (0..n).map(|i| layers.iter().map(|l| l.values.get(i).copied().unwrap_or(0.0)).sum()).collect();
    let mut svg = String::new();
    let result = (|| -> Result<(), String> {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let top = totals.iter().copied().fold(0.0, f64::max).max(1.0) * 1.2;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(52)
            .build_cartesian_2d((0..n.max(1) as i32).into_segmented(), 0.0..top)
            .map_err(|e| e.to_string())?;
        let label = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) => usize::try_from(*i).ok().and_then(|i| labels.get(i)).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc(y_desc)
            .x_labels(n.clamp(1, 14))
            .x_label_style(("sans-serif", 11))
            .x_label_formatter(&label)
            .y_label_formatter(&|y| whole(*y))
            .draw()
            .map_err(|e| e.to_string())?;
        let mut base = vec![0.0; n];
        for layer in layers {
            let color = layer.color;
            let bars: Vec<_> = (0..n)
                .map(|i| {
                    let (from, to) = (base[i], base[i] + layer.values.get(i).copied().unwrap_or(0.0));
                    base[i] = to;
                    let mut bar = Rectangle::new([(SegmentValue::Exact(i as i32), from), (SegmentValue::Exact(i as i32 + 1), to)], color.filled());
                    bar.set_margin(0, 0, 4, 4);
                    bar
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(|e| e.to_string())?
                .label(layer.name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        }
        let style = TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
        chart
            .draw_series(totals.iter().enumerate().filter(|(_, t)| **t > 0.0).map(|(i, t)| {
                Text::new(format!("{t:.0}"), (SegmentValue::CenterOf(i as i32), *t), style.clone())
            }))
            .map_err(|e| e.to_string())?;
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

    /// The text of every `<text>` element of an SVG, trimmed.
    fn texts(svg: &str) -> Vec<&str> {
        svg.split("<text").skip(1).filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0.trim())).collect()
    }

    #[test]
    fn charts_are_svg_with_their_labels() {
        let svg = lines("jobs", "jobs", &[Line { name: "completed", color: GREEN_LINE, values: vec![0.0, 2.0, 1.0] }]).expect("drawn");
        assert!(svg.starts_with("<svg") && svg.contains("completed"), "{svg}");
        let svg = bars("plans", &["basic".into(), "pro".into()], &[1, 3], Some(&[4, 8])).expect("drawn");
        assert!(svg.contains("pro") && svg.contains("slots"), "{svg}");
        let days = vec!["12-05".to_string(), "12-06".to_string()];
        let svg = stacked_bars(
            "spent",
            &days,
            "credits",
            &[Line { name: "image_generation", color: BLUE_LINE, values: vec![0.0, 120.0] }, Line { name: "model_creation", color: GREEN_LINE, values: vec![0.0, 311.0] }],
        )
        .expect("drawn");
        let texts = texts(&svg);
        assert!(texts.contains(&"431") && texts.contains(&"12-06") && texts.contains(&"model_creation"), "the day's total above its bar: {texts:?}");
        assert_eq!(texts.iter().filter(|t| **t == "431").count(), 1, "one total, over the day that spent: {texts:?}");
        let svg = lines_by("balance", &days, "credits", &[Line { name: "available", color: BLUE_LINE, values: vec![5000.0, 4569.0] }]).expect("drawn");
        let texts = self::texts(&svg);
        assert!(texts.contains(&"12-05") && texts.contains(&"12-06") && texts.contains(&"available"), "{texts:?}");
    }
}
