//! A dump produced by a database tool's stdout: the [`StreamSource`] shared by MySQL and
//! PostgreSQL. Each engine says how to start its tool ([`DumpSpec`]); starting, waiting and
//! describing the result is the same for all.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::Command;

use coffer_core::format::{DatabaseItem, DatabaseItemKind, Name};
use coffer_core::source::{item_path, SourceError, StreamSource};

use crate::process::{stderr_warnings, Producer};
use crate::{now, source_error, DbError};

/// How to start one engine's dump tool for one item.
pub(crate) trait DumpSpec: Send {
    /// `mysql database shop`.
    fn describe(&self) -> String;
    /// Below `/.databases`.
    fn location(&self) -> Vec<Name>;
    /// The database, or `None` for the server-wide definitions.
    fn database(&self) -> Option<&str>;
    /// The item's format name (see docs/FORMAT.md).
    fn format(&self) -> &'static str;
    /// Look up what the item needs and build the command (run right after).
    fn prepare(&mut self) -> Result<Prepared, DbError>;
}

/// A command ready to run, with what is known about the item so far.
pub(crate) struct Prepared {
    pub cmd: Command,
    pub tool: &'static str,
    pub facts: Facts,
}

/// What an item records besides its content.
#[derive(Default)]
pub(crate) struct Facts {
    /// The tool's options (never a password).
    pub options: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub warnings: Vec<String>,
}

pub(crate) struct ToolDump<S> {
    pub engine: &'static str,
    pub spec: S,
    pub server_version: String,
    /// The tool's version line.
    pub tool: String,
    running: Option<(Producer, chrono::DateTime<chrono::FixedOffset>, Facts)>,
}

impl<S: DumpSpec> ToolDump<S> {
    pub fn new(engine: &'static str, spec: S, server_version: String, tool: String) -> Self {
        ToolDump {
            engine,
            spec,
            server_version,
            tool,
            running: None,
        }
    }
}

impl<S: DumpSpec> StreamSource for ToolDump<S> {
    fn describe(&self) -> String {
        self.spec.describe()
    }

    fn location(&self) -> Vec<Name> {
        self.spec.location()
    }

    fn open(&mut self) -> Result<Box<dyn Read + Send>, SourceError> {
        let what = self.spec.describe();
        let p = self.spec.prepare().map_err(source_error)?;
        let start = now();
        let (producer, stdout) = Producer::spawn(p.cmd, p.tool, &what).map_err(source_error)?;
        self.running = Some((producer, start, p.facts));
        Ok(Box::new(stdout))
    }

    fn finish(&mut self, complete: bool, size: u64) -> Result<DatabaseItem, SourceError> {
        let what = self.spec.describe();
        let Some((mut producer, start, mut kept)) = self.running.take() else {
            return Err(SourceError(format!("{what}: not started")));
        };
        let stderr = producer.finish(complete, &what).map_err(source_error)?;
        kept.warnings.extend(stderr_warnings(&stderr));
        let db = self.spec.database();
        Ok(DatabaseItem {
            engine: self.engine.into(),
            kind: if db.is_some() {
                DatabaseItemKind::Database
            } else {
                DatabaseItemKind::Globals
            },
            name: db.unwrap_or_default().to_string(),
            path: item_path(&self.spec.location()),
            format: self.spec.format().into(),
            server_version: self.server_version.clone(),
            tool: self.tool.clone(),
            options: kept.options,
            start,
            end: now(),
            size,
            properties: kept.properties,
            warnings: kept.warnings,
        })
    }
}
