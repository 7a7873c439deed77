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

/// `0.1.0 (commit 1a2b3c4d5e)`
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("COFFER_COMMIT"), ")");

#[derive(Parser, Debug)]
#[command(
    name = "coffer",
    version = VERSION,
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
    /// Repository location: a local path (/srv/backup), s3:https://HOST/BUCKET/PREFIX,
    /// s3:BUCKET/PREFIX (AWS), sftp:[USER@]HOST:/PATH, sftp://[USER@]HOST:PORT/PATH, or a
    /// coffer server https://HOST:PORT/REPO
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
    /// Do not use the local cache of a remote repository's metadata (COFFER_CACHE_DIR,
    /// else ~/.cache/coffer)
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// Print nothing but errors and warnings
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Print more (repeat for even more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Trust this CA certificate (PEM) for a coffer server, e.g. its self-signed cert.pem
    #[arg(long, env = "COFFER_CACERT", global = true, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Read the coffer server token from FILE (or set COFFER_TOKEN)
    #[arg(long, env = "COFFER_TOKEN_FILE", global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Report backup, check, forget, prune, restore and copy runs to this coffer server
    /// repository (https://HOST:PORT/REPO; token from COFFER_REPORT_TOKEN, else the usual
    /// token sources). Runs on a coffer server repository are reported to it anyway
    #[arg(long, env = "COFFER_REPORT_TO", global = true, value_name = "URL")]
    pub report_to: Option<String>,
    /// The configuration file (repositories and jobs) for --repo-name, --job, `run` and
    /// `config check` [default: /etc/coffer/coffer.toml]
    #[arg(long, env = "COFFER_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Use the repository the configuration declares under NAME (its location, password,
    /// token, CA certificate and S3/SSH settings) instead of -r and the password options
    #[arg(long, global = true, value_name = "NAME")]
    pub repo_name: Option<String>,
    /// Keep uploads to the repository under RATE: 800K (KiB/s), 10M or 10MiB/s (MiB/s).
    /// Local, SFTP and coffer server repositories are paced every 256 KiB; S3 object by
    /// object. A job's limit_upload sets it for `run` and the agent
    #[arg(long, env = "COFFER_LIMIT_UPLOAD", global = true, value_name = "RATE", value_parser = rate_arg)]
    pub limit_upload: Option<u64>,
    /// Keep reads from the repository under RATE (same units as --limit-upload): restores,
    /// checks and copies from a remote site that must not fill its link. Each range read
    /// waits for its share before it is sent. A job's limit_download sets it
    #[arg(long, env = "COFFER_LIMIT_DOWNLOAD", global = true, value_name = "RATE", value_parser = rate_arg)]
    pub limit_download: Option<u64>,
    /// Memory the repository's index may take (default 256M): past it, the index is sorted
    /// into unlinked files under the cache directory and read from there, so a repository
    /// of tens of millions of blobs fits a small machine. E.g. 64M on a 1 GiB VPS. A job's
    /// index_memory sets it
    #[arg(long, env = "COFFER_INDEX_MEMORY", global = true, value_name = "SIZE", value_parser = index_memory_arg)]
    pub index_memory: Option<u64>,
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
    /// Find entries by name or path in every snapshot (the grammar of --exclude: `*.sql`,
    /// `/var/www/*/wp-config.php`)
    Find(FindArgs),
    /// Mount the repository's snapshots read-only (FUSE) on DIR: hosts/HOST/TIME, snapshots/ID,
    /// tags/TAG/HOST/TIME, latest/HOST; Ctrl-C or SIGTERM unmounts
    Mount(MountArgs),
    /// Restore one database from a snapshot into its server, or to a file
    #[command(name = "restore-db")]
    RestoreDb(RestoreDbArgs),
    /// Restore a site, its files and its databases, from one snapshot as one unit: a
    /// `[site.NAME]` of the configuration, a cPanel account the snapshot holds, or paths and
    /// databases given here
    #[command(name = "restore-site")]
    RestoreSite(RestoreSiteArgs),
    /// Rebuild a machine from its snapshot: every backed-up path below --target, then the
    /// database users and roles, then every database, into this machine's servers; a plan
    /// first, a report at the end
    #[command(name = "restore-host")]
    RestoreHost(RestoreHostArgs),
    /// Prove restores work: restore a random sample of files and every database of a
    /// snapshot into scratch places, verify them against the snapshot, clean up, report the
    /// time it took (exit 1 if anything did not come back as it was)
    Drill(DrillArgs),
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
    /// Run the coffer server, or manage its clients, retention, verification and trash
    Server(ServerArgs),
    /// Copy snapshots from another repository into this one (-r); keys may differ, only
    /// missing data moves, and a snapshot copied before is skipped
    Copy(CopyArgs),
    /// Run a job of the configuration now, as the agent would: its backups to every
    /// destination, then its retention (or, with --check, its verification)
    Run(RunArgs),
    /// The configuration file
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run the configuration's jobs on their schedules (a daemon: SIGHUP reloads the
    /// configuration, SIGTERM stops it after telling running jobs to stop)
    Agent(AgentArgs),
    /// Shell completions, man pages and systemd units (for packages)
    #[command(subcommand, hide = true)]
    Generate(GenerateCommand),
}

#[derive(Subcommand, Debug)]
pub enum GenerateCommand {
    /// Shell completions on stdout
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Man pages, one per command, into DIR
    Man { dir: PathBuf },
    /// The systemd units of the agent and the server, into DIR
    Systemd {
        dir: PathBuf,
        /// The installed binary
        #[arg(long, default_value = "/usr/bin/coffer")]
        exe: PathBuf,
        /// The agent's configuration file
        #[arg(long, default_value = "/etc/coffer/coffer.toml")]
        config: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
}

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Write a systemd unit that runs `coffer agent` with this configuration, then enable
    /// and start it (where systemd runs); prints what it did
    Install {
        /// Show the unit and the commands, change nothing
        #[arg(long)]
        dry_run: bool,
        /// Where the unit goes
        #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
    },
    /// List one directory of a snapshot for the console that asked (started by the agent,
    /// with --repo-name of `[managed] server`)
    #[command(hide = true)]
    Browse {
        #[arg(long)]
        request: i64,
        snapshot: String,
        path: String,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The job's name in the configuration
    pub job: String,
    /// Run the job's check (`[job.NAME.check]`) instead of its backup
    #[arg(long, conflicts_with = "drill")]
    pub check: bool,
    /// Run the job's restore drill (`[job.NAME.drill]`) instead of its backup
    #[arg(long)]
    pub drill: bool,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Check the configuration and show what it resolves to, with each job's next run
    /// (exit 2: it does not parse or check; 1: a file it names is missing)
    Check,
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// The repository to copy from
    #[arg(long, env = "COFFER_FROM_REPOSITORY", value_name = "REPO")]
    pub from_repo: String,
    /// Read the source repository's password from FILE (or set COFFER_FROM_PASSWORD)
    #[arg(long, env = "COFFER_FROM_PASSWORD_FILE", value_name = "FILE")]
    pub from_password_file: Option<PathBuf>,
    /// Run CMD and use its first line as the source repository's password
    #[arg(long, env = "COFFER_FROM_PASSWORD_COMMAND", value_name = "CMD")]
    pub from_password_command: Option<String>,
    /// The source coffer server's token file (or set COFFER_FROM_TOKEN)
    #[arg(long, env = "COFFER_FROM_TOKEN_FILE", value_name = "FILE")]
    pub from_token_file: Option<PathBuf>,
    /// CA certificate for the source coffer server
    #[arg(long, env = "COFFER_FROM_CACERT", value_name = "FILE")]
    pub from_cacert: Option<PathBuf>,
    /// Snapshots to copy (ids, prefixes or `latest`); every snapshot when none is given
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = false)]
pub struct ServerArgs {
    /// The server's data directory (repositories, catalog, certificate)
    #[arg(long, env = "COFFER_SERVER_DATA", value_name = "DIR", global = true)]
    pub data: Option<PathBuf>,
    /// Where repositories are kept: `local` (below DATA/repos, the default) or an
    /// S3-compatible bucket, `s3:https://HOST/BUCKET/PREFIX` (credentials as for the client:
    /// AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws/credentials). Chosen at the first
    /// start and recorded in DATA/storage; later runs may leave it out
    #[arg(long, env = "COFFER_SERVER_STORAGE", value_name = "LOCATION", global = true)]
    pub storage: Option<String>,
    #[command(subcommand)]
    pub command: Option<ServerCommand>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address and port to listen on
    #[arg(long, default_value = "127.0.0.1:8443", value_name = "ADDR:PORT")]
    pub listen: String,
    /// Certificate chain (PEM); without it a self-signed certificate is made in DATA/tls
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The address operators and clients reach this server at (`https://backup.example.net:8443`),
    /// when it is not the listening address (a proxy, NAT, a name): printed in console links.
    /// Without it: https://LISTEN-ADDRESS, with this machine's host name for 0.0.0.0 or [::]
    #[arg(long, value_name = "URL", value_parser = public_url_arg)]
    pub public_url: Option<String>,
    /// Extra host names for the self-signed certificate (repeatable)
    #[arg(long = "tls-name", value_name = "NAME")]
    pub tls_names: Vec<String>,
    /// Run retention this often (0 = only on demand)
    #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = duration_arg)]
    pub retention_every: String,
    /// Verify every stored object this often (0 = only on demand)
    #[arg(long, default_value = "7d", value_name = "DURATION", value_parser = duration_arg)]
    pub verify_every: String,
    /// Uploads written at once
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub max_uploads: usize,
    /// Connections open at once (each managed agent holds one, its long poll); more wait in
    /// the kernel's queue. The server raises its open-file limit to fit
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_connections: usize,
    /// Uploads one client may have in flight at once (a stolen token sending slowly cannot
    /// hold every slot)
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub max_uploads_per_client: usize,
    /// The slowest an upload may arrive on average, in bytes per second: an upload has the
    /// idle timeout plus its length at this rate to complete
    #[arg(long, default_value_t = 16384, value_name = "BYTES")]
    pub min_upload_rate: u64,
    /// An upload (or a request body) that sends nothing for this long is aborted
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = duration_arg)]
    pub idle_timeout: String,
    /// Judge the fleet, send due alerts and the digest this often
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = duration_arg)]
    pub monitor_every: String,
    /// Unreferenced packs younger than this are kept by retention
    #[arg(long, default_value = "24h", value_name = "DURATION", value_parser = duration_arg, global = true)]
    pub pack_grace: String,
    /// How long removed objects stay in the trash
    #[arg(long, default_value = "14d", value_name = "DURATION", value_parser = duration_arg, global = true)]
    pub trash_for: String,
    /// Read the current time from FILE (seconds since the epoch); for tests only
    #[arg(long, hide = true, value_name = "FILE", global = true)]
    pub test_clock: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum ServerCommand {
    /// Manage clients (each has one repository, one role and one token)
    #[command(subcommand)]
    Client(ServerClientCommand),
    /// Manage repositories: retention policy and quota
    #[command(subcommand)]
    Repo(ServerRepoCommand),
    /// Apply retention now (what the server does on its own every --retention-every)
    Retention {
        /// Only this repository
        #[arg(long)]
        repo: Option<String>,
        /// Show what would be removed, remove nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-hash every stored object against its name, and check each pack's parity, without
    /// any key
    Verify {
        /// Only this repository
        #[arg(long)]
        repo: Option<String>,
        /// Write back damaged packs their parity rebuilds (and damaged parity files), each in
        /// one step and only when the rebuilt bytes hash to the pack's name
        #[arg(long)]
        repair: bool,
    },
    /// List or restore what retention and admins removed
    #[command(subcommand)]
    Trash(ServerTrashCommand),
    /// Print the certificate's path and SHA-256 fingerprint (making it if needed)
    Cert,
    /// Write a systemd unit that runs this server (with --data and --listen as given), then
    /// enable and start it (where systemd runs); prints what it did
    Install {
        /// Show the unit and the commands, change nothing
        #[arg(long)]
        dry_run: bool,
        /// Where the unit goes
        #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
    },
    /// Every monitored client's state, worst first (what the console and the digest show).
    ///
    /// Exits as a monitoring plugin (Nagios, Icinga, Zabbix): 0 OK (every client OK), 1 WARNING
    /// (a client with warnings, or with no backup yet), 2 CRITICAL (a client FAILED or
    /// OVERDUE), 3 UNKNOWN (no clients monitored, or no server data directory at --data).
    Status,
    /// Print the daily digest now; with --send, also queue it to the alert targets
    Digest {
        #[arg(long)]
        send: bool,
    },
    /// Where alerts go and when they are raised
    #[command(subcommand)]
    Alerts(ServerAlertsCommand),
    /// Console operators (they log in to the console and read /metrics)
    #[command(subcommand)]
    Operator(ServerOperatorCommand),
}

#[derive(Subcommand, Debug)]
pub enum ServerAlertsCommand {
    /// Show the alert settings (the SMTP password only as set or not)
    Show,
    /// Change alert settings (options not given stay as they are)
    Set(Box<ServerAlertsSetArgs>),
    /// Queue a test message to every target and deliver it now
    Test,
    /// The alert log: messages sent, waiting or given up, newest first
    Log {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Args, Debug)]
pub struct ServerAlertsSetArgs {
    /// SMTP server, HOST[:PORT] (port 587 by default, 465 with --smtp-tls tls)
    #[arg(long, value_name = "HOST[:PORT]")]
    pub smtp: Option<String>,
    /// starttls (default), tls (implicit) or none (a relay on this machine only)
    #[arg(long, value_name = "MODE")]
    pub smtp_tls: Option<String>,
    /// SMTP user; its password is read from --smtp-password-file
    #[arg(long, value_name = "USER")]
    pub smtp_user: Option<String>,
    /// File holding the SMTP password (first line)
    #[arg(long, value_name = "FILE")]
    pub smtp_password_file: Option<PathBuf>,
    /// Trust this CA certificate (PEM) for the mail server too (`none` removes it)
    #[arg(long, value_name = "FILE")]
    pub smtp_cacert: Option<String>,
    /// Turn email alerts off
    #[arg(long, conflicts_with_all = ["smtp", "smtp_tls", "smtp_user", "smtp_password_file", "smtp_cacert"])]
    pub no_smtp: bool,
    /// Sender address
    #[arg(long, value_name = "ADDRESS")]
    pub from: Option<String>,
    /// Recipients (repeatable; replaces the list)
    #[arg(long, value_name = "ADDRESS")]
    pub to: Vec<String>,
    /// Webhook URLs (repeatable; replaces the list; `none` clears it)
    #[arg(long, value_name = "URL")]
    pub webhook: Vec<String>,
    /// Time of the daily digest, HH:MM in UTC (`none` turns it off)
    #[arg(long, value_name = "HH:MM")]
    pub digest_at: Option<String>,
    /// A backup with more warnings than this raises an alert (default 0: any)
    #[arg(long, value_name = "N")]
    pub warnings_above: Option<u64>,
    /// A repository this full (percent of its quota) raises an alert (default 90)
    #[arg(long, value_name = "PERCENT")]
    pub quota_percent: Option<u8>,
}

#[derive(Subcommand, Debug)]
pub enum ServerOperatorCommand {
    /// Add an operator; prints the generated password once, alone on stdout
    Add {
        name: String,
        /// A login that sees this one client only (a hosting customer's): its page, runs
        /// and drills, browsing and asking for its restores; not the fleet, the jobs' forms,
        /// "Back up now", alerts or metrics
        #[arg(long, value_name = "CLIENT")]
        client: Option<String>,
    },
    List,
    /// Remove an operator (its console sessions end)
    Remove {
        name: String,
    },
    /// Print a one-time console login link (https://SERVER/console/link/...), valid 10
    /// minutes; SERVER is the address the running server recorded (its --public-url or
    /// listening address)
    Link {
        name: String,
        /// The server's address, when it differs from what the server recorded
        #[arg(long, value_name = "URL", value_parser = public_url_arg)]
        url: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct ServerJobSetArgs {
    pub client: String,
    pub job: String,
    /// A path to back up (repeatable; each must be allowed by the client's [managed] paths)
    #[arg(long = "path", value_name = "PATH")]
    pub paths: Vec<String>,
    /// The repositories (names in the client's configuration) to back up to (repeatable)
    #[arg(long = "to", value_name = "REPO", required = true)]
    pub to: Vec<String>,
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    #[arg(long)]
    pub exclude_caches: bool,
    #[arg(long)]
    pub one_file_system: bool,
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// MariaDB/MySQL databases: all, or NAME,NAME
    #[arg(long, value_name = "all|DB,...")]
    pub mysql: Option<String>,
    /// PostgreSQL databases: all, or NAME,NAME
    #[arg(long, value_name = "all|DB,...")]
    pub postgres: Option<String>,
    /// When it runs: a cron expression, e.g. "30 2 * * *"; without it, only when asked
    /// (`coffer server client run`)
    #[arg(long, value_name = "CRON")]
    pub schedule: Option<String>,
    /// The schedule's time zone (default: the client's)
    #[arg(long, value_name = "ZONE", requires = "schedule")]
    pub timezone: Option<String>,
    /// Spread the fleet: each host starts at its own fixed point in this window
    #[arg(long, value_name = "DURATION", value_parser = duration_arg, requires = "schedule")]
    pub random_delay: Option<String>,
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// The check's schedule (cron)
    #[arg(long, value_name = "CRON")]
    pub check_schedule: Option<String>,
    /// What share of the data each check reads (N/M or P%)
    #[arg(long, value_name = "SUBSET", requires = "check_schedule")]
    pub read_data_subset: Option<String>,
    /// Keep the job's uploads under RATE (its limit_upload): 800K, 10M
    #[arg(long, value_name = "RATE", value_parser = rate_text_arg)]
    pub upload_limit: Option<String>,
    /// Keep the job's reads (its checks and drills) under RATE (its limit_download)
    #[arg(long, value_name = "RATE", value_parser = rate_text_arg)]
    pub download_limit: Option<String>,
    /// Run the job at this CPU niceness (0 to 19: lower priority only)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..=19))]
    pub nice: Option<i32>,
    /// The job's I/O class: idle, or best-effort:4 to 7 (lower priority only)
    #[arg(long, value_name = "CLASS", value_parser = ioclass_arg)]
    pub ionice: Option<String>,
    /// Compression threads for the job (default: one per core)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: Option<u32>,
    /// The job's index memory budget (its index_memory): 64M, at least 1M (the global
    /// --index-memory is this command's own)
    #[arg(long, value_name = "SIZE", value_parser = memory_text_arg)]
    pub index_budget: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ServerJobCommand {
    /// Set a managed job of a client: add it, or replace its whole definition (what the
    /// flags do not give is cleared, including what was set in the console)
    Set(Box<ServerJobSetArgs>),
    /// List a client's managed jobs (--json for their definitions)
    List { client: String },
    /// Remove a client's managed job
    Remove { client: String, job: String },
}

#[derive(Subcommand, Debug)]
pub enum ServerClientCommand {
    /// Add a client; prints its token once, alone on stdout
    Add {
        name: String,
        /// The repository it may use (created if new)
        #[arg(long)]
        repo: String,
        /// append (back up, never delete), read (restore) or admin (everything)
        #[arg(long, default_value = "append", value_parser = role_arg)]
        role: String,
    },
    /// List clients
    List,
    /// Remove a client (its token stops working at once)
    Remove { name: String },
    /// Acknowledge a client's ANOMALY (a backup that looked like files encrypted in place),
    /// once its files are known good or restored: the alarm closes and retention of its
    /// repository, paused until now, resumes
    Ack { name: String },
    /// Jobs the client's agent takes from this server: its configuration's [managed] section
    /// says which paths, destinations and databases they may name (hooks and commands never
    /// come from here)
    #[command(subcommand)]
    Job(ServerJobCommand),
    /// Ask the client's agent to run a job now ("back up now"): it starts within seconds
    /// and reports like every run
    Run {
        name: String,
        job: String,
        /// The job's check instead of its backup
        #[arg(long)]
        check: bool,
    },
    /// Say when the client's backups are expected: the server raises the alarm when one
    /// does not arrive (judged by its own clock)
    Expect {
        name: String,
        /// A cron expression in UTC, e.g. "30 2 * * *" (02:30 daily); `none` stops watching
        schedule: String,
        /// How late a backup may arrive, e.g. 2h, 30min
        #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = duration_arg)]
        grace: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ServerRepoCommand {
    /// List repositories with their usage, policy and last verification
    List,
    /// Set a repository's retention policy (by the time the server received each snapshot)
    /// and quota
    Set(ServerRepoSetArgs),
}

#[derive(Args, Debug)]
pub struct ServerRepoSetArgs {
    pub repo: String,
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot received within this duration of the newest
    #[arg(long, value_name = "DURATION", value_parser = retention_arg)]
    pub keep_within: Option<String>,
    /// Remove the policy (retention then removes nothing)
    #[arg(long, conflicts_with_all = ["keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_within"])]
    pub no_policy: bool,
    /// Quota, e.g. 500G (`none` removes it)
    #[arg(long, value_name = "SIZE")]
    pub quota: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ServerTrashCommand {
    /// List a repository's trash
    List { repo: String },
    /// Put trashed objects back: all of them, or one KIND/NAME
    Restore {
        repo: String,
        /// e.g. snapshots/<id> or data/<id>
        object: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Default compression: zstd, lz4, zlib, lzma or none (optionally ALGO:LEVEL)
    #[arg(long, default_value = "zstd", value_name = "ALGO[:LEVEL]", value_parser = compression_arg)]
    pub compression: String,
    /// Compression level (zstd 1-22, zlib/lzma 0-9); default depends on the algorithm
    #[arg(long)]
    pub compression_level: Option<i32>,
    /// Target pack size in MiB (1-1024)
    #[arg(long, default_value_t = 16, value_name = "MIB", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub pack_size: u32,
    /// Reed-Solomon parity written beside each pack, as a share of the pack (0 to 50%, e.g.
    /// 1% or 0.5%; 0 turns it off). 1% repairs any 11 damaged 16 KiB stretches of a 16 MiB pack
    #[arg(long, default_value = "1%", value_name = "PERCENT", value_parser = parity_arg)]
    pub parity: u32,
    /// Read the new password from FILE instead of the repository password sources
    #[arg(long, value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Files and directories to back up
    #[arg(required_unless_present_any = ["mysql", "postgres", "sqlite", "job", "device", "stdin"])]
    pub paths: Vec<PathBuf>,
    /// Back up what the configuration's job NAME says (paths, databases, excludes, tags)
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
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
    /// Read a block device whole into the snapshot as an image, `/.images/NAME` (NAME: the
    /// device's file name; repeat for several). Freeze or snapshot a mounted file system first
    #[arg(long, value_name = "DEVICE", help_heading = "Images")]
    pub device: Vec<PathBuf>,
    /// Store what arrives on standard input as the image `/.images/NAME`
    /// (`pg_basebackup ... | coffer backup --stdin NAME`; set -o pipefail)
    #[arg(long, value_name = "NAME", help_heading = "Images", value_parser = image_name_arg)]
    pub stdin: Option<String>,
    /// Exclude paths matching PATTERN (`*.tmp` matches names, `/var/cache/*` whole paths)
    #[arg(short, long, value_name = "PATTERN", value_parser = glob_arg)]
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
    #[arg(long, value_name = "ALGO[:LEVEL]", value_parser = compression_arg)]
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

/// Which snapshots a command considers (`snapshots`, `forget`, `copy`), and which one `latest`
/// is (`ls`, `restore`, `diff`, `dump`, `restore-db`).
#[derive(Args, Debug, Clone, Default)]
pub struct SnapshotFilter {
    /// Only snapshots of this host (repeat for several)
    #[arg(long = "host", id = "filter_host", value_name = "HOST")]
    pub host: Vec<String>,
    /// Only snapshots carrying this tag (repeat: all must be present)
    #[arg(long = "tag", id = "filter_tag", value_name = "TAG")]
    pub tag: Vec<String>,
    /// Only snapshots that include this backed-up path (repeat: all must be included)
    #[arg(long = "path", id = "filter_path", value_name = "PATH")]
    pub path: Vec<String>,
}

impl SnapshotFilter {
    pub fn matches(&self, s: &coffer_core::format::Snapshot) -> bool {
        // `/etc/` names the same backed-up path as `/etc`
        let norm = |p: &str| {
            let t = p.trim_end_matches('/');
            if t.is_empty() {
                "/".to_string()
            } else {
                t.to_string()
            }
        };
        (self.host.is_empty() || self.host.contains(&s.hostname))
            && self.tag.iter().all(|t| s.tags.contains(t))
            && self
                .path
                .iter()
                .all(|p| s.paths.iter().any(|sp| norm(sp) == norm(p)))
    }

    pub fn is_empty(&self) -> bool {
        self.host.is_empty() && self.tag.is_empty() && self.path.is_empty()
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
    /// Snapshot id, unique prefix, or `latest` (the newest matching --host/--path/--tag; `latest~1` the one before)
    pub snapshot: String,
    #[command(flatten)]
    pub filter: SnapshotFilter,
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
    /// Snapshot id, unique prefix, or `latest` (the newest matching --host/--path/--tag; `latest~1` the one before)
    pub snapshot: String,
    #[command(flatten)]
    pub filter: SnapshotFilter,
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
pub struct DrillArgs {
    /// Snapshot id, unique prefix, or `latest` (default: the newest of this machine's host name)
    pub snapshot: Option<String>,
    /// Drill the configured job NAME: its newest snapshot, its number of files, its database
    /// connections
    #[arg(long, value_name = "NAME", conflicts_with = "snapshot")]
    pub job: Option<String>,
    #[command(flatten)]
    pub filter: SnapshotFilter,
    /// How many files to restore and verify, chosen at random
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub files: u64,
    /// Leave the databases out
    #[arg(long)]
    pub no_databases: bool,
    #[command(flatten)]
    pub db: DbConnArgs,
}

#[derive(Args, Debug)]
pub struct RestoreHostArgs {
    /// The host whose snapshot is restored, as `coffer snapshots` names it
    pub host: String,
    /// Snapshot id or unique prefix (default: the host's newest, passing over before-restore ones)
    pub snapshot: Option<String>,
    /// Where the machine's / is: a mounted new root (/mnt/newroot), or / itself on the new
    /// machine (with --yes; files that belong to the machine, fstab, network, machine-id,
    /// are then kept as they are)
    #[arg(short, long, value_name = "DIR")]
    pub target: PathBuf,
    /// Go ahead when --target is / (read the plan first with --dry-run)
    #[arg(long)]
    pub yes: bool,
    /// Show the plan only
    #[arg(long)]
    pub dry_run: bool,
    /// Files only: leave database users, roles and databases out
    #[arg(long)]
    pub no_databases: bool,
    /// Also apply the database users, grants and roles the snapshot holds (SQL from the
    /// snapshot, run with the servers' administrator rights: review it first with
    /// `restore-db SNAPSHOT mysql-globals --to-file -`)
    #[arg(long, conflicts_with = "no_databases")]
    pub apply_globals: bool,
    /// Onto /: restore the machine's own files too (fstab, network, hostname, machine-id, /boot)
    #[arg(long)]
    pub include_machine_files: bool,
    /// PostgreSQL: do not restore ownership (every object belongs to the restoring user)
    #[arg(long)]
    pub no_owner: bool,
    #[command(flatten)]
    pub db: DbConnArgs,
}

#[derive(Args, Debug)]
pub struct RestoreSiteArgs {
    /// Snapshot id, unique prefix, or `latest` (the newest matching --host/--path/--tag; `latest~1` the one before)
    pub snapshot: String,
    /// The site: a `[site.NAME]` of the configuration, else a cPanel account of the snapshot
    /// (`/var/cpanel/users/NAME`: its home directory and its NAME_* databases)
    pub site: Option<String>,
    #[command(flatten)]
    pub filter: SnapshotFilter,
    /// A path of the site (instead of a named site; repeat)
    #[arg(long = "site-path", value_name = "PATH", conflicts_with = "site")]
    pub site_path: Vec<PathBuf>,
    /// A MySQL/MariaDB database of the site (instead of a named site; repeat)
    #[arg(long = "site-mysql", value_name = "DB", conflicts_with = "site")]
    pub site_mysql: Vec<String>,
    /// A PostgreSQL database of the site (instead of a named site; repeat)
    #[arg(long = "site-postgres", value_name = "DB", conflicts_with = "site")]
    pub site_postgres: Vec<String>,
    /// Restore the files below DIR (DIR/var/www/shop); databases as NAME + --db-suffix
    #[arg(
        short,
        long,
        value_name = "DIR",
        required_unless_present = "in_place",
        conflicts_with = "in_place"
    )]
    pub target: Option<PathBuf>,
    /// Restore the files where they were (only the site's paths). The site's current files
    /// and databases are saved first, in a snapshot tagged before-restore
    #[arg(long)]
    pub in_place: bool,
    /// Restore the databases under their own names, replacing the current ones (which the
    /// before-restore snapshot saves first)
    #[arg(long)]
    pub replace_databases: bool,
    /// Without --replace-databases, each database is restored as NAME + SUFFIX, a new
    /// database (default: `_restored`)
    #[arg(long, value_name = "SUFFIX", conflicts_with = "replace_databases")]
    pub db_suffix: Option<String>,
    /// Existing files: always, if-changed (content differs), if-newer (mtime), never
    #[arg(long, default_value = "always", value_name = "WHEN", value_parser = overwrite_arg)]
    pub overwrite: String,
    /// Delete what the site's paths hold but the snapshot does not
    #[arg(long)]
    pub delete: bool,
    /// PostgreSQL: do not restore ownership (every object belongs to the restoring user)
    #[arg(long)]
    pub no_owner: bool,
    /// Show the plan (files, databases, what would be replaced) without changing anything
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub db: DbConnArgs,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// SNAPSHOT or SNAPSHOT:PATH (the contents of PATH land in the target); SNAPSHOT is an
    /// id, a unique prefix, or `latest` (the newest matching --host/--path/--tag; `latest~1` the one before)
    pub snapshot: String,
    #[command(flatten)]
    pub filter: SnapshotFilter,
    /// Directory to restore into (created if missing)
    #[arg(short, long, value_name = "DIR", required_unless_present = "device")]
    pub target: Option<PathBuf>,
    /// Write an image (`backup --device`/`--stdin`) onto this block device instead: the
    /// snapshot's only image, or the one named (`SNAPSHOT:/.images/NAME`). Refused while the
    /// device or a partition of it is mounted or in use, or when it is smaller than the image
    #[arg(long, value_name = "DEVICE", conflicts_with_all = ["target", "delete", "include", "exclude", "verify"])]
    pub device: Option<PathBuf>,
    /// Restore only paths matching PATTERN (and everything below matching directories)
    #[arg(short, long, value_name = "PATTERN", value_parser = glob_arg)]
    pub include: Vec<String>,
    /// Do not restore paths matching PATTERN
    #[arg(short, long, value_name = "PATTERN", value_parser = glob_arg)]
    pub exclude: Vec<String>,
    /// Show what would be restored without writing anything
    #[arg(long)]
    pub dry_run: bool,
    /// Existing files: always, if-changed (content differs), if-newer (mtime), never
    #[arg(long, default_value = "always", value_name = "WHEN", value_parser = overwrite_arg)]
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
    /// With SNAPSHOT:PATH, put PATH at its own place below the target (DIR/var/www/shop, as a
    /// restore of the whole snapshot would) instead of its contents straight into DIR
    #[arg(long)]
    pub full_path: bool,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// Snapshot id, unique prefix, or `latest` (the newest matching --host/--path/--tag; `latest~1` the one before)
    pub snapshot1: String,
    pub snapshot2: String,
    #[command(flatten)]
    pub filter: SnapshotFilter,
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
    /// Make a new generated key: 256 random bits in a file that takes a passphrase's place
    /// (`--password-file`, `init`, `key add --new-password-file`). It opens its key file
    /// without argon2id's 64 MiB and ~0.15 s: for unattended jobs. Needs no repository.
    Generate {
        /// Write the key to FILE (created with mode 0600; never overwritten) instead of
        /// printing it
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Add a key (a new password that opens the repository)
    Add {
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
        /// A key that can back up (and deduplicate) but not read anything back: no file
        /// names, no data, no snapshot list. For clients whose backups a thief must not read.
        #[arg(long)]
        write_only: bool,
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
    /// Keep every snapshot within DURATION of the newest one (e.g. 14d, 1y6months, 36h; a bare
    /// `m` is refused here: write min or months)
    #[arg(long, value_name = "DURATION", value_parser = retention_arg)]
    pub keep_within: Option<String>,
    /// Keep snapshots carrying all of these tags (repeat for alternatives)
    #[arg(long, value_name = "TAG[,TAG...]")]
    pub keep_tag: Vec<String>,
    /// Group snapshots by these fields before applying the policy
    #[arg(long, value_name = "host,paths,tags", default_value = "host,paths", value_parser = group_by_arg)]
    pub group_by: String,
    #[command(flatten)]
    pub filter: SnapshotFilter,
    /// Show what would be removed and why the rest is kept, and remove nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Run prune afterwards (with its default settings)
    #[arg(long)]
    pub prune: bool,
    /// Apply the retention of the configuration's job NAME, to that job's snapshots of this
    /// host only
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct PruneArgs {
    /// Repack packs until at most this share of stored bytes is unused (e.g. 5%, 0%)
    #[arg(long, default_value = "5%", value_name = "PERCENT", value_parser = percent_arg)]
    pub max_unused: String,
    /// Delete condemned data no sooner than this after it was condemned (e.g. 0h, 24h, 2d)
    #[arg(long, default_value = "0h", value_name = "DURATION", value_parser = duration_arg)]
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
    #[arg(long, value_name = "N/M|P%", value_parser = read_data_arg)]
    pub read_data_subset: Option<String>,
    /// Read the share of data the configuration's job NAME says (`[job.NAME.check]`)
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
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
    /// Rebuild damaged packs from their parity and write them back in place (same name, same
    /// bytes); write missing or damaged parity files
    Packs {
        /// Only report what would be repaired
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// Only these packs (ids as `check` names them, `data/` prefix allowed); default: all
        #[arg(value_name = "PACK", value_parser = pack_arg)]
        packs: Vec<String>,
    },
    /// S3 with versioning or Object Lock: bring back config, keys, snapshots and packs that a
    /// plain DELETE hid behind a delete marker (e.g. made with a stolen credential)
    Undelete,
}

#[derive(Args, Debug)]
pub struct FindArgs {
    /// A name pattern (`*.sql`: at any depth) or, with `/`, a whole path (`/home/*/mail`)
    #[arg(required = true, value_name = "PATTERN", value_parser = glob_arg)]
    pub patterns: Vec<String>,
    /// Only this snapshot (id, unique prefix or latest; repeat for several)
    #[arg(long = "snapshot", value_name = "ID")]
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// An empty directory to mount on
    pub mountpoint: std::path::PathBuf,
    /// Let other users in too (each file's mode and ACL still decide what they may read)
    #[arg(long)]
    pub allow_other: bool,
}

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// Snapshot id, unique prefix, or `latest` (the newest matching --host/--path/--tag; `latest~1` the one before)
    pub snapshot: String,
    #[command(flatten)]
    pub filter: SnapshotFilter,
    /// The file's path in the snapshot
    pub path: String,
}

// Flag values checked while the command line is parsed, so that a bad one exits 2 with clap's
// message before anything is opened (ripgrep's way). Each returns the text unchanged: the
// command parses it again where it is used.

fn checked<E: std::fmt::Display>(s: &str, r: Result<impl Sized, E>) -> Result<String, String> {
    r.map(|_| s.to_string()).map_err(|e| e.to_string())
}

/// A glob pattern for --include/--exclude.
pub fn glob_arg(s: &str) -> Result<String, String> {
    checked(s, coffer_core::filter::PathMatcher::new(&[s.to_string()]))
}

/// One file name for an image.
pub fn image_name_arg(s: &str) -> Result<String, String> {
    checked(s, coffer_core::image::check_name(s))
}

/// always, if-changed, if-newer or never.
pub fn overwrite_arg(s: &str) -> Result<String, String> {
    checked(s, s.parse::<coffer_core::restore::Overwrite>())
}

/// ALGO or ALGO:LEVEL.
/// `--parity`: a percentage (`1%`, `0.5`, `0`) as basis points, at most 50%.
pub fn parity_arg(s: &str) -> Result<u32, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage (e.g. 1% or 0.5%; 0 turns parity off)"))?;
    let max = coffer_core::format::MAX_PARITY as f64 / 100.0;
    if !(0.0..=max).contains(&v) {
        return Err(format!("{s:?}: parity is between 0% and {max}%"));
    }
    let bp = (v * 100.0).round() as u32;
    if v > 0.0 && bp == 0 {
        return Err(format!("{s:?}: the smallest parity is 0.01%"));
    }
    Ok(bp)
}

/// A pack id: 64 hex digits, optionally as `data/ab/<id>` or `data/<id>`.
pub fn pack_arg(s: &str) -> Result<String, String> {
    let id = s.rsplit('/').next().unwrap_or(s);
    coffer_core::format::Id::from_hex(id)
        .map(|i| i.to_hex())
        .map_err(|_| format!("{s:?} is not a pack id (64 hex digits, as `coffer check` names packs)"))
}

pub fn compression_arg(s: &str) -> Result<String, String> {
    checked(s, crate::cmd::parse_compression(s, None))
}

/// N/M or P%.
pub fn read_data_arg(s: &str) -> Result<String, String> {
    checked(s, s.parse::<coffer_core::check::ReadData>())
}

/// A percentage from 0% to 100%.
pub fn percent_arg(s: &str) -> Result<String, String> {
    checked(s, crate::cmd::parse_percent(s))
}

/// An https:// address with a host (and no path beyond "/").
pub fn public_url_arg(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("https://")
        .ok_or_else(|| format!("{s:?}: the address must start with https://"))?;
    let rest = rest.trim_end_matches('/');
    let host_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    if rest.is_empty() || !rest.chars().all(host_chars) {
        return Err(format!(
            "{s:?}: give https://HOST or https://HOST:PORT, without a path"
        ));
    }
    Ok(format!("https://{rest}"))
}

/// A duration in the one grammar (m is minutes).
pub fn duration_arg(s: &str) -> Result<String, String> {
    checked(s, coffer_core::duration::parse(s, "duration"))
}

/// An upload rate, bytes per second.
pub fn rate_arg(s: &str) -> Result<u64, String> {
    coffer_core::limit::parse_rate(s, "rate").map_err(|e| e.to_string())
}

/// The index's memory budget: a size of at least 1 MiB.
pub fn index_memory_arg(s: &str) -> Result<u64, String> {
    coffer_core::limit::parse_memory(s, "--index-memory").map_err(|e| e.to_string())
}

/// An index memory budget, kept as written (a managed job's index_memory).
pub fn memory_text_arg(s: &str) -> Result<String, String> {
    checked(s, coffer_core::limit::parse_memory(s, "--index-budget"))
}

/// An upload rate, kept as written (a managed job's limit).
pub fn rate_text_arg(s: &str) -> Result<String, String> {
    checked(s, coffer_core::limit::parse_rate(s, "rate"))
}

/// An I/O class, kept as written.
pub fn ioclass_arg(s: &str) -> Result<String, String> {
    s.parse::<coffer_wire::IoClass>().map(|_| s.to_string())
}

/// A retention period (a bare m is refused).
pub fn retention_arg(s: &str) -> Result<String, String> {
    checked(s, coffer_core::duration::parse_retention(s, "retention period"))
}

/// host,paths,tags.
pub fn group_by_arg(s: &str) -> Result<String, String> {
    checked(s, s.parse::<coffer_core::forget::GroupBy>())
}

/// append, read or admin.
pub fn role_arg(s: &str) -> Result<String, String> {
    checked(s, s.parse::<coffer_server::catalog::Role>())
}
