//! Where the libraries' `tracing` events go. A command prints warnings as plain lines on
//! stderr ("coffer: ..."), like its own messages: retry notices from the backends and from
//! the S3 client. The server and the agent are long-running: each line carries the local
//! time and the level, from `info` up.
//!
//! `COFFER_LOG` overrides the filter (tracing's `EnvFilter` syntax, e.g. `debug` or
//! `warn,coffer_server=debug`).

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::ChronoLocal;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// How a process logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// One command: warnings only, as plain lines.
    Command,
    /// The server or the agent: timestamped lines from `info` up.
    Daemon,
}

/// The S3 client's own retries (object_store says them at level info).
const S3_RETRIES: &str = "object_store::client::retry";

pub fn init(style: Style) {
    let default = match style {
        Style::Command => format!("warn,{S3_RETRIES}=info"),
        Style::Daemon => format!("info,{S3_RETRIES}=info"),
    };
    let filter = std::env::var("COFFER_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let _ = match style {
        Style::Command => builder.event_format(Plain).try_init(),
        Style::Daemon => builder
            .with_target(false)
            .with_timer(ChronoLocal::new("%Y-%m-%d %H:%M:%S".to_string()))
            .try_init(),
    };
}

/// `coffer: MESSAGE` (the S3 client's retry notices as `coffer: S3: MESSAGE`).
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        if event.metadata().target().starts_with("object_store") {
            write!(w, "coffer: S3: ")?;
        } else {
            write!(w, "coffer: ")?;
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}
