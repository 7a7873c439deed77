//! Command-line definitions. Names and habits follow restic: `-r/--repo`, `--json`,
//! `COFFER_REPOSITORY`, `COFFER_PASSWORD_FILE`, snapshot ids by prefix or `latest`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub const EXIT_CODES: &str = "\
Exit codes:
  0   success
  1   fatal error (nothing was done, or the command failed)
  2   wrong usage (bad flags or arguments)
  3   backup written, but some files or databases could not be read (see warnings)
  10  the repository does not exist
  12  wrong password
  130 interrupted";

#[derive(Parser, Debug)]
#[command(
    name = "coffer",
    version,
    about = "Deduplicated, compressed, encrypted backups",
    after_help = EXIT_CODES,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Repository location (a directory)
    #[arg(
        short = 'r',
        long = "repo",
        env = "COFFER_REPOSITORY",
        global = true,
        value_name = "REPO"
    )]
    pub repo: Option<String>,
    /// Read the repository password from the first line of FILE
    #[arg(long, env = "COFFER_PASSWORD_FILE", global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Run CMD (with sh -c) and use the first line of its output as the password
    #[arg(long, env = "COFFER_PASSWORD_COMMAND", global = true, value_name = "CMD")]
    pub password_command: Option<String>,
    /// Print machine-readable JSON on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing but errors and warnings
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Print more (repeat for even more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new repository
    Init(InitArgs),
    /// Back up files and directories
    Backup(BackupArgs),
    /// List snapshots
    Snapshots(SnapshotsArgs),
    /// List the files in a snapshot
    Ls(LsArgs),
    /// Restore a snapshot, or a path of it, into a directory
    Restore(RestoreArgs),
    /// Show what changed between two snapshots
    Diff(DiffArgs),
    /// Write a file of a snapshot to stdout
    Dump(DumpArgs),
    /// Restore one database from a snapshot into its server, or to a file
    #[command(name = "restore-db")]
    RestoreDb(RestoreDbArgs),
    /// Print a repository object as JSON (for debugging)
    Cat(CatArgs),
    /// Remove snapshots by id or by a retention policy
    Forget(ForgetArgs),
    /// Delete data that no snapshot uses (safe while other clients back up)
    Prune(PruneArgs),
    /// Verify the repository: structure, and optionally the stored data
    Check(CheckArgs),
    /// Repair a damaged repository
    #[command(subcommand)]
    Repair(RepairCommand),
    /// Manage the repository's keys (passwords)
    #[command(subcommand)]
    Key(KeyCommand),
    /// Show repository sizes, deduplication and compression
    Stats,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Default compression: zstd, lz4, zlib, lzma or none (optionally ALGO:LEVEL)
    #[arg(long, default_value = "zstd", value_name = "ALGO[:LEVEL]")]
    pub compression: String,
    /// Compression level (zstd 1-22, zlib/lzma 0-9); default depends on the algorithm
    #[arg(long)]
    pub compression_level: Option<i32>,
    /// Target pack size in MiB
    #[arg(long, default_value_t = 16, value_name = "MIB")]
    pub pack_size: u32,
    /// Read the new password from FILE instead of the repository password sources
    #[arg(long, value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Files and directories to back up
    #[arg(required_unless_present_any = ["mysql", "postgres", "sqlite"])]
    pub paths: Vec<PathBuf>,
    /// Dump MySQL/MariaDB databases into the snapshot: `all` or NAME[,NAME...]
    #[arg(long, value_name = "all|DB,...", help_heading = "Databases")]
    pub mysql: Option<String>,
    /// Also dump MySQL/MariaDB users and grants (needs mariadb-dump)
    #[arg(long, requires = "mysql", help_heading = "Databases")]
    pub mysql_users: bool,
    /// Dump PostgreSQL databases (and the roles and tablespaces): `all` or NAME[,NAME...]
    #[arg(long, value_name = "all|DB,...", help_heading = "Databases")]
    pub postgres: Option<String>,
    /// Copy a live SQLite database consistently (repeat for several)
    #[arg(long, value_name = "FILE", help_heading = "Databases")]
    pub sqlite: Vec<PathBuf>,
    #[command(flatten)]
    pub db: DbConnArgs,
    /// Exclude paths matching PATTERN (`*.tmp` matches names, `/var/cache/*` whole paths)
    #[arg(short, long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Read exclude patterns from FILE, one per line (# starts a comment)
    #[arg(long, value_name = "FILE")]
    pub exclude_file: Vec<PathBuf>,
    /// Skip the contents of directories holding a CACHEDIR.TAG
    #[arg(long)]
    pub exclude_caches: bool,
    /// Do not cross file system boundaries
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// Add a tag to the snapshot (repeat or separate with commas)
    #[arg(long, value_name = "TAG", value_delimiter = ',')]
    pub tag: Vec<String>,
    /// Record this host name instead of the machine's
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Compare against this snapshot instead of the newest of this host and paths
    #[arg(long, value_name = "SNAPSHOT", conflicts_with = "force")]
    pub parent: Option<String>,
    /// Read every file, even those unchanged since the parent snapshot
    #[arg(short, long)]
    pub force: bool,
    /// Compression threads (default: one per core)
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Compression for this run: zstd, lz4, zlib, lzma or none, with an optional level
    /// (`zstd:19`); default: the repository's
    #[arg(long, value_name = "ALGO[:LEVEL]")]
    pub compression: Option<String>,
}

/// How to reach database servers. Passwords come from the tools' own sources (MYSQL_PWD or an
/// option file, PGPASSWORD or ~/.pgpass), never from coffer's command line.
#[derive(Args, Debug, Clone, Default)]
pub struct DbConnArgs {
    /// MySQL/MariaDB host (default: the local socket)
    #[arg(long, value_name = "HOST", help_heading = "Database connections")]
    pub mysql_host: Option<String>,
    #[arg(long, value_name = "PORT", help_heading = "Database connections")]
    pub mysql_port: Option<u16>,
    /// MySQL/MariaDB socket file
    #[arg(long, value_name = "PATH", help_heading = "Database connections")]
    pub mysql_socket: Option<PathBuf>,
    #[arg(long, value_name = "USER", help_heading = "Database connections")]
    pub mysql_user: Option<String>,
    /// Option file with extra client settings, e.g. the password ([client] password=...)
    #[arg(long, value_name = "FILE", help_heading = "Database connections")]
    pub mysql_defaults_file: Option<PathBuf>,
    /// PostgreSQL host, address or socket directory (default: libpq's, e.g. PGHOST)
    #[arg(long, value_name = "HOST", help_heading = "Database connections")]
    pub pg_host: Option<String>,
    #[arg(long, value_name = "PORT", help_heading = "Database connections")]
    pub pg_port: Option<u16>,
    #[arg(long, value_name = "USER", help_heading = "Database connections")]
    pub pg_user: Option<String>,
}

/// Which snapshots a command considers (`snapshots`, `forget`).
#[derive(Args, Debug, Clone, Default)]
pub struct SnapshotFilter {
    /// Only snapshots of this host (repeat for several)
    #[arg(long, value_name = "HOST")]
    pub host: Vec<String>,
    /// Only snapshots carrying this tag (repeat: all must be present)
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// Only snapshots that include this path (repeat: all must be included)
    #[arg(long, value_name = "PATH")]
    pub path: Vec<String>,
}

impl SnapshotFilter {
    pub fn matches(&self, s: &coffer_core::format::Snapshot) -> bool {
        (self.host.is_empty() || self.host.contains(&s.hostname))
            && self.tag.iter().all(|t| s.tags.contains(t))
            && self.path.iter().all(|p| s.paths.contains(p))
    }
}

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub filter: SnapshotFilter,
    /// Only the newest N snapshots
    #[arg(long, value_name = "N")]
    pub latest: Option<usize>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Snapshot id, unique prefix, or `latest`
    pub snapshot: String,
    /// Only list below this path
    #[arg(default_value = "/")]
    pub path: String,
    /// Long listing: mode, owner, size, time
    #[arg(short, long)]
    pub long: bool,
    /// List only the entries directly in PATH
    #[arg(long)]
    pub no_recursive: bool,
    /// List the database dumps in the snapshot instead of files
    #[arg(long, conflicts_with_all = ["long", "no_recursive"])]
    pub databases: bool,
}

#[derive(Args, Debug)]
pub struct RestoreDbArgs {
    /// Snapshot id, unique prefix, or `latest`
    pub snapshot: String,
    /// The dump to restore, as `coffer ls SNAPSHOT --databases` names it: `mysql/shop`,
    /// `postgres/app`, `sqlite/var/lib/app.db`, `postgres-globals`, `mysql-globals`
    pub item: String,
    /// Restore under this database name (MySQL, PostgreSQL); default: the original name
    #[arg(long = "as", value_name = "NAME", conflicts_with = "to_file")]
    pub as_name: Option<String>,
    /// Write the dump to FILE instead (`-` for stdout): SQL for MySQL, a pg_restore archive
    /// for PostgreSQL, a database file for SQLite
    #[arg(long, value_name = "FILE")]
    pub to_file: Option<PathBuf>,
    /// PostgreSQL: do not restore ownership (every object belongs to the restoring user)
    #[arg(long)]
    pub no_owner: bool,
    #[command(flatten)]
    pub db: DbConnArgs,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// SNAPSHOT or SNAPSHOT:PATH (the contents of PATH land in the target)
    pub snapshot: String,
    /// Directory to restore into (created if missing)
    #[arg(short, long, value_name = "DIR")]
    pub target: PathBuf,
    /// Restore only paths matching PATTERN (and everything below matching directories)
    #[arg(short, long, value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Do not restore paths matching PATTERN
    #[arg(short, long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Show what would be restored without writing anything
    #[arg(long)]
    pub dry_run: bool,
    /// Existing files: always, if-changed (content differs), if-newer (mtime), never
    #[arg(long, default_value = "always", value_name = "WHEN")]
    pub overwrite: String,
    /// Delete what is in the target but not in the snapshot (makes the target match it)
    #[arg(long)]
    pub delete: bool,
    /// Read every restored file back and compare it with the snapshot
    #[arg(long)]
    pub verify: bool,
    /// Restore owners by number, ignoring user and group names
    #[arg(long)]
    pub numeric_owner: bool,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    pub snapshot1: String,
    pub snapshot2: String,
    /// Also list metadata-only changes (mode, owner, mtime)
    #[arg(long)]
    pub metadata: bool,
}

#[derive(Args, Debug)]
pub struct CatArgs {
    /// config, snapshot, tree, index, key or pack
    pub kind: String,
    /// The object's id (tree: a snapshot id or a tree id)
    pub id: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// List the keys
    List,
    /// Add a key (a new password that opens the repository)
    Add {
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// Remove a key (not the one in use)
    Remove { id: String },
    /// Change the password of the key in use
    Passwd {
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Snapshots to remove (ids or prefixes); without them, the --keep-* policy decides
    pub snapshots: Vec<String>,
    /// Keep the N newest snapshots (-1: all)
    #[arg(long, value_name = "N", allow_negative_numbers = true, default_value_t = 0)]
    pub keep_last: i64,
    /// Keep the newest snapshot of each of the N newest hours with snapshots
    #[arg(long, value_name = "N", allow_negative_numbers = true, default_value_t = 0)]
    pub keep_hourly: i64,
    /// Keep the newest snapshot of each of the N newest days with snapshots
    #[arg(long, value_name = "N", allow_negative_numbers = true, default_value_t = 0)]
    pub keep_daily: i64,
    /// Keep the newest snapshot of each of the N newest ISO weeks with snapshots
    #[arg(long, value_name = "N", allow_negative_numbers = true, default_value_t = 0)]
    pub keep_weekly: i64,
    /// Keep the newest snapshot of each of the N newest months with snapshots
    #[arg(long, value_name = "N", allow_negative_numbers = true, default_value_t = 0)]
    pub keep_monthly: i64,
    /// Keep the newest snapshot of each of the N newest years with snapshots
    #[arg(long, value_name = "N", allow_negative_numbers = true, default_value_t = 0)]
    pub keep_yearly: i64,
    /// Keep every snapshot within DURATION of the newest one (e.g. 14d, 1y6m, 36h)
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Keep snapshots carrying all of these tags (repeat for alternatives)
    #[arg(long, value_name = "TAG[,TAG...]")]
    pub keep_tag: Vec<String>,
    /// Group snapshots by these fields before applying the policy
    #[arg(long, value_name = "host,paths,tags", default_value = "host,paths")]
    pub group_by: String,
    #[command(flatten)]
    pub filter: SnapshotFilter,
    /// Show what would be removed and why the rest is kept, and remove nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Run prune afterwards (with its default settings)
    #[arg(long)]
    pub prune: bool,
}

#[derive(Args, Debug, Clone)]
pub struct PruneArgs {
    /// Repack packs until at most this share of stored bytes is unused (e.g. 5%, 0%)
    #[arg(long, default_value = "5%", value_name = "PERCENT")]
    pub max_unused: String,
    /// Delete condemned data no sooner than this after it was condemned (e.g. 0h, 24h, 2d)
    #[arg(long, default_value = "0h", value_name = "DURATION")]
    pub grace: String,
    /// Show what would be condemned, and change nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Read and verify all stored data
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Read and verify a subset: N/M (group N of M) or P% (the packs verified longest ago)
    #[arg(long, value_name = "N/M|P%")]
    pub read_data_subset: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum RepairCommand {
    /// Rebuild the index from the packs
    Index,
    /// Rewrite snapshots that reference lost data (damaged files are flagged, not zero-filled)
    Snapshots {
        /// Only report what would be repaired
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// Remove snapshot files that cannot be read at all (they cannot be salvaged)
        #[arg(long)]
        forget: bool,
    },
}

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// Snapshot id, unique prefix, or `latest`
    pub snapshot: String,
    /// The file's path in the snapshot
    pub path: String,
}
