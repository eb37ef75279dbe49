//! `tracing` setup: pretty or JSON lines on stderr, filtered by the configured directive
//! (`RUST_LOG` wins when set). Colour only when stderr is a terminal, so logs redirected
//! to a file or a collector carry no escape codes. Commands that draw progress bars ask
//! for [`Output::WithProgress`]: log lines then go through tracing-indicatif's writer,
//! which lifts the bars, prints the line and redraws them (no torn lines), and a span
//! that carries the `indicatif.pb_show` field gets a bar.

use std::io::IsTerminal;

use tracing_indicatif::filter::IndicatifFilter;
use tracing_indicatif::IndicatifLayer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogFormat, LogSettings};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Log lines only (servers, workers).
    Plain,
    /// Log lines and progress bars sharing stderr.
    WithProgress,
}

/// Installs the global subscriber. Calling it twice keeps the first one.
pub fn init(settings: &LogSettings, output: Output) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match output {
        Output::Plain => registry.with(lines(settings.format, ansi, std::io::stderr)).try_init(),
        Output::WithProgress => {
            let bars = IndicatifLayer::new();
            let writer = bars.get_stderr_writer();
            registry.with(lines(settings.format, ansi, writer)).with(bars.with_filter(IndicatifFilter::new(false))).try_init()
        }
    };
}

type Subscriber = tracing_subscriber::layer::Layered<EnvFilter, Registry>;

fn lines<W>(format: LogFormat, ansi: bool, writer: W) -> Box<dyn Layer<Subscriber> + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi);
    match format {
        LogFormat::Json => layer.json().flatten_event(true).with_current_span(true).with_span_list(true).boxed(),
        LogFormat::Pretty => layer.compact().boxed(),
    }
}
