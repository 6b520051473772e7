//! The daemon's memory: the devices it knows and the call history, in SQLite
//! (`data_dir/voicelink.db`, WAL: a committed row survives a SIGKILL at any
//! moment). One thread owns the connection; everyone else sends it requests, and
//! reads the known devices from a `watch` channel the thread keeps current, so
//! deciding on a call request never waits for the disk.
//!
//! A database that cannot be used (corrupt, locked by another voiced, written by a
//! newer voiced, a full disk) never stops calls: the daemon says what is wrong (log,
//! a `DaemonError` event, `voicectl status`) and goes on without history, and it
//! never deletes or rewrites the user's data to recover.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};
use voicelink_core::contacts::{Contact, Contacts, Standing};
use voicelink_core::history::{HistoryEntry, HistoryQuery, Outcome, Retention};
use voicelink_core::vocab::{CallId, DeviceId, Direction};

use crate::events::{Change, EventHub};

/// The file in the data directory.
pub const DATABASE_FILE: &str = "voicelink.db";

/// Schema migrations, in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    // 1: known devices, the names they used, call history.
    "CREATE TABLE devices (
        device_id TEXT PRIMARY KEY,
        alias TEXT,
        standing TEXT NOT NULL DEFAULT 'known',
        verified INTEGER NOT NULL DEFAULT 0,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL
    );
    CREATE TABLE device_names (
        device_id TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        last_used INTEGER NOT NULL,
        PRIMARY KEY (device_id, name)
    );
    CREATE TABLE calls (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        call_id TEXT NOT NULL,
        peer_id TEXT,
        peer_name TEXT NOT NULL,
        direction TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        setup_ms INTEGER,
        talk_ms INTEGER NOT NULL DEFAULT 0,
        outcome TEXT,
        detail TEXT NOT NULL DEFAULT '',
        mos REAL,
        loss REAL,
        rtt_ms REAL,
        seen INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX calls_by_call ON calls (call_id);
    CREATE INDEX calls_by_start ON calls (started_at);
    CREATE INDEX calls_by_peer ON calls (peer_id, started_at);",
];

/// Why the store cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened or read.
    #[error("cannot open the history database {path}: {reason}")]
    Open {
        /// The file.
        path: PathBuf,
        /// SQLite's reason.
        reason: String,
    },
    /// SQLite says the file is damaged.
    #[error(
        "the history database {path} is damaged ({reason}); voiced runs without history and contacts and leaves \
         the file alone: move it aside to start a new one, or repair it with sqlite3's .recover"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the integrity check said.
        reason: String,
    },
    /// A newer voiced wrote it.
    #[error(
        "the history database {path} has schema {found}, newer than this voiced knows ({known}); it runs without \
         history and contacts and leaves the file alone: use the newer voiced"
    )]
    Newer {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        known: i64,
    },
    /// A read or write failed (a full disk, a lock held too long).
    #[error("the history database failed: {0} (is the disk full, or the data directory not writable?)")]
    Failed(String),
    /// The store is not running (it could not open, or the daemon is stopping).
    #[error("history and contacts are unavailable: {0}")]
    Unavailable(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        StoreError::Failed(error.to_string())
    }
}

/// A page of history.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    /// Newest first, with their row IDs (for paging).
    pub entries: Vec<(i64, HistoryEntry)>,
    /// Missed calls not yet marked seen.
    pub unseen_missed: u64,
}

/// What the store is asked.
enum Request {
    CallStarted(HistoryEntry),
    CallEnded(HistoryEntry),
    /// A device completed a call with us (either way), or the user decided
    /// about it while it advertised this name.
    Met {
        device: DeviceId,
        name: String,
        at: SystemTime,
    },
    SetStanding {
        device: DeviceId,
        standing: Standing,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    SetAlias {
        device: DeviceId,
        alias: Option<String>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    SetVerified {
        device: DeviceId,
        verified: bool,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Forget {
        device: DeviceId,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    History {
        query: HistoryQuery,
        reply: oneshot::Sender<Result<HistoryPage, StoreError>>,
    },
    MarkMissedSeen {
        up_to: Option<i64>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Answered once every request before it is carried out.
    Flush {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// A handle to the store's thread. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    requests: Option<mpsc::Sender<Request>>,
    contacts: watch::Receiver<Arc<Contacts>>,
    /// Why there is no store, when there is none.
    problem: Option<StoreError>,
    /// The last write that failed (a full disk), until one succeeds again.
    failing: Arc<std::sync::Mutex<Option<String>>>,
    /// The database file, when there is one.
    path: Option<PathBuf>,
}

impl Store {
    /// Opens (or creates) the database in `data_dir` and starts its thread. A
    /// database that cannot be used gives a store that says why on every request.
    pub fn open(data_dir: &Path, retention: Retention, hub: EventHub) -> Store {
        let path = data_dir.join(DATABASE_FILE);
        let (contacts_tx, contacts) = watch::channel(Arc::new(Contacts::default()));
        match Database::open(&path, retention) {
            Ok(mut database) => {
                if let Err(error) = database.recover_interrupted() {
                    warn!(%error, "cannot mark calls the daemon did not see end");
                }
                database.trim();
                let _ = contacts_tx.send(Arc::new(database.read_contacts().unwrap_or_default()));
                let failing = Arc::new(std::sync::Mutex::new(None));
                database.failing = Some(failing.clone());
                let (requests, receiver) = mpsc::channel(256);
                let spawned = std::thread::Builder::new()
                    .name("voicelink-store".into())
                    .spawn(move || database.serve(receiver, contacts_tx, &hub));
                match spawned {
                    Ok(_) => Store { requests: Some(requests), contacts, problem: None, failing, path: Some(path) },
                    Err(e) => Store::without(StoreError::Failed(e.to_string()), contacts, Some(path)),
                }
            }
            Err(problem) => {
                error!(%problem, "history and contacts are off");
                hub.publish(Change::Problem(problem.to_string()));
                Store::without(problem, contacts, Some(path))
            }
        }
    }

    /// A store that keeps nothing: history and contacts off for `reason`.
    pub fn off(reason: &str) -> Store {
        let (_, contacts) = watch::channel(Arc::new(Contacts::default()));
        Store::without(StoreError::Unavailable(reason.to_owned()), contacts, None)
    }

    fn without(problem: StoreError, contacts: watch::Receiver<Arc<Contacts>>, path: Option<PathBuf>) -> Store {
        Store { requests: None, contacts, problem: Some(problem), failing: Arc::default(), path }
    }

    /// The database file (whether or not it could be used); `None` for a store
    /// that was never opened.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Why history and contacts are off, or why writing fails now, if so.
    pub fn problem(&self) -> Option<String> {
        match &self.problem {
            Some(problem) => Some(problem.to_string()),
            None => self.failing.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone(),
        }
    }

    /// The known devices now (kept current by the store's thread).
    pub fn contacts(&self) -> watch::Receiver<Arc<Contacts>> {
        self.contacts.clone()
    }

    fn unavailable(&self) -> StoreError {
        StoreError::Unavailable(
            self.problem.as_ref().map_or_else(|| "the daemon is stopping".into(), ToString::to_string),
        )
    }

    /// Records without waiting (history rows are written in order, in the background).
    fn tell(&self, request: Request) {
        if let Some(requests) = &self.requests
            && requests.try_send(request).is_err()
        {
            warn!("the history database is falling behind; a history row was dropped");
        }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let requests = self.requests.as_ref().ok_or_else(|| self.unavailable())?;
        let (reply, answer) = oneshot::channel();
        requests.send(make(reply)).await.map_err(|_| self.unavailable())?;
        answer.await.map_err(|_| self.unavailable())?
    }

    /// A call began: its row exists from now on (an interrupted call is not lost).
    pub fn call_started(&self, entry: HistoryEntry) {
        self.tell(Request::CallStarted(entry));
    }

    /// A call ended (or was refused): its row is completed.
    pub fn call_ended(&self, entry: HistoryEntry) {
        self.tell(Request::CallEnded(entry));
    }

    /// A call with `device` was answered, or the user is about to decide about
    /// it while it advertises `name`: it is known from now on, and so is the
    /// name (unless another known device used it first).
    pub fn met(&self, device: DeviceId, name: String, at: SystemTime) {
        self.tell(Request::Met { device, name, at });
    }

    /// Trust, block, or back to plain known (the device becomes known if it was not).
    pub async fn set_standing(&self, device: DeviceId, standing: Standing) -> Result<(), StoreError> {
        self.ask(|reply| Request::SetStanding { device, standing, reply }).await
    }

    /// The user's own name for a device (`None` removes it).
    pub async fn set_alias(&self, device: DeviceId, alias: Option<String>) -> Result<(), StoreError> {
        self.ask(|reply| Request::SetAlias { device, alias, reply }).await
    }

    /// The user compared safety numbers with the device (or takes that back).
    pub async fn set_verified(&self, device: DeviceId, verified: bool) -> Result<(), StoreError> {
        self.ask(|reply| Request::SetVerified { device, verified, reply }).await
    }

    /// Forgets a device (its history stays). False if it was not known.
    pub async fn forget(&self, device: DeviceId) -> Result<bool, StoreError> {
        self.ask(|reply| Request::Forget { device, reply }).await
    }

    /// A page of history.
    pub async fn history(&self, query: HistoryQuery) -> Result<HistoryPage, StoreError> {
        self.ask(|reply| Request::History { query, reply }).await
    }

    /// Marks missed calls seen (those up to row `up_to`, or all); returns how many
    /// were unseen.
    pub async fn mark_missed_seen(&self, up_to: Option<i64>) -> Result<u64, StoreError> {
        self.ask(|reply| Request::MarkMissedSeen { up_to, reply }).await
    }

    /// Waits until every request sent so far is written (at shutdown: the last
    /// calls' rows are in the file before the daemon exits).
    pub async fn flush(&self) {
        if self.requests.is_some() {
            let _ = self.ask(|reply| Request::Flush { reply }).await;
        }
    }
}

fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn direction_word(direction: Direction) -> &'static str {
    match direction {
        Direction::Outgoing => "outgoing",
        Direction::Incoming => "incoming",
    }
}

/// The connection, on the store's thread.
struct Database {
    connection: Connection,
    retention: Retention,
    /// Where the known devices are published (set when serving starts).
    contacts: Option<watch::Sender<Arc<Contacts>>>,
    /// Where a failure is told, once per kind of failure (set when serving starts).
    hub: Option<EventHub>,
    /// The last failure told, so a full disk is not reported for every call.
    last_failure: Option<String>,
    /// Where the handles read the current failure (for `voicectl status`).
    failing: Option<Arc<std::sync::Mutex<Option<String>>>>,
}

impl Database {
    fn open(path: &Path, retention: Retention) -> Result<Database, StoreError> {
        let open_error = |e: rusqlite::Error| StoreError::Open { path: path.to_owned(), reason: e.to_string() };
        let connection = Connection::open(path).map_err(open_error)?;
        connection.busy_timeout(Duration::from_secs(2)).map_err(open_error)?;
        // A damaged file is found now, not in the middle of a call.
        let check: String = connection.query_row("PRAGMA quick_check", [], |row| row.get(0)).map_err(|e| {
            // Only SQLite's own verdict means damage; a lock or a permission is not.
            let damaged = matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            );
            if damaged { StoreError::Corrupt { path: path.to_owned(), reason: e.to_string() } } else { open_error(e) }
        })?;
        if check != "ok" {
            return Err(StoreError::Corrupt { path: path.to_owned(), reason: check });
        }
        let found: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(open_error)?;
        let known = MIGRATIONS.len() as i64;
        if found > known {
            return Err(StoreError::Newer { path: path.to_owned(), found, known });
        }
        connection
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(open_error)?;
        let mut database =
            Database { connection, retention, contacts: None, hub: None, last_failure: None, failing: None };
        database.migrate(found).map_err(open_error)?;
        info!(database = %path.display(), schema = known, "opened the history database");
        Ok(database)
    }

    fn migrate(&mut self, from: i64) -> rusqlite::Result<()> {
        for (version, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(from).unwrap_or(0)) {
            let transaction = self.connection.transaction()?;
            transaction.execute_batch(sql)?;
            transaction.pragma_update(None, "user_version", version as i64 + 1)?;
            transaction.commit()?;
        }
        Ok(())
    }

    /// Calls whose end the daemon never saw (it was killed): interrupted.
    fn recover_interrupted(&mut self) -> rusqlite::Result<usize> {
        let count = self.connection.execute(
            "UPDATE calls SET outcome = ?1, detail = 'the daemon stopped during the call' WHERE outcome IS NULL",
            params![Outcome::Interrupted.as_str()],
        )?;
        if count > 0 {
            info!(calls = count, "calls the daemon did not see end are marked interrupted");
        }
        Ok(count)
    }

    /// Keeps the history within its retention.
    fn trim(&mut self) {
        let oldest = millis(SystemTime::now()) - i64::try_from(self.retention.max_age.as_millis()).unwrap_or(i64::MAX);
        let max = i64::try_from(self.retention.max_entries).unwrap_or(i64::MAX);
        // By age first, then the oldest beyond the count.
        let result = self.connection.execute("DELETE FROM calls WHERE started_at < ?1", params![oldest]).and_then(|_| {
            self.connection.execute(
                "DELETE FROM calls WHERE id IN (SELECT id FROM calls ORDER BY started_at DESC, id DESC LIMIT -1 OFFSET ?1)",
                params![max],
            )
        });
        if let Err(error) = result {
            warn!(%error, "cannot trim the call history");
        }
    }

    fn read_contacts(&self) -> rusqlite::Result<Contacts> {
        let mut names = self.connection.prepare("SELECT device_id, name FROM device_names ORDER BY last_used DESC")?;
        let mut by_device: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
        for row in names.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))? {
            let (device, name) = row?;
            by_device.entry(device).or_default().push(name);
        }
        let mut devices = self
            .connection
            .prepare("SELECT device_id, alias, standing, verified, first_seen, last_seen FROM devices")?;
        let rows = devices.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, Option<String>>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, bool>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, i64>(5)?,
            ))
        })?;
        let mut contacts = Vec::new();
        for row in rows {
            let (id, alias, standing, verified, first_seen, last_seen) = row?;
            // A row this version cannot read is skipped, never deleted.
            let (Ok(device_id), Some(standing)) = (id.parse::<DeviceId>(), Standing::parse(&standing)) else {
                warn!(device = %id.escape_debug(), "skipping a device row this voiced cannot read");
                continue;
            };
            contacts.push(Contact {
                device_id,
                names: by_device.remove(&id).unwrap_or_default(),
                alias,
                standing,
                verified,
                first_seen: from_millis(first_seen),
                last_seen: from_millis(last_seen),
            });
        }
        Ok(Contacts::new(contacts))
    }

    /// Serves requests until the daemon drops every handle.
    fn serve(mut self, mut requests: mpsc::Receiver<Request>, contacts: watch::Sender<Arc<Contacts>>, hub: &EventHub) {
        self.contacts = Some(contacts);
        self.hub = Some(hub.clone());
        while let Some(request) = requests.blocking_recv() {
            if let Some(added) = self.handle(request) {
                hub.publish(Change::HistoryAdded(Box::new(added)));
            }
        }
    }

    /// Publishes the known devices after a change, before the change's reply, so
    /// whoever asked sees it at once.
    fn publish_contacts(&self) {
        match self.read_contacts() {
            Ok(now) => {
                if let Some(contacts) = &self.contacts {
                    let _ = contacts.send(Arc::new(now));
                }
            }
            Err(error) => warn!(%error, "cannot read the known devices"),
        }
    }

    /// Carries out one request; returns the history row it completed, if any.
    fn handle(&mut self, request: Request) -> Option<HistoryEntry> {
        match request {
            Request::CallStarted(entry) => self.log(self.insert_call(&entry)),
            Request::CallEnded(entry) => {
                let result = self.end_call(&entry);
                let written = result.is_ok();
                self.log(result);
                self.trim();
                return written.then_some(entry);
            }
            Request::Met { device, name, at } => {
                self.log(self.meet(device, &name, at));
                self.publish_contacts();
            }
            Request::SetStanding { device, standing, reply } => {
                self.update_device(device, "standing", &standing.as_str(), reply);
            }
            Request::SetAlias { device, alias, reply } => self.update_device(device, "alias", &alias, reply),
            Request::SetVerified { device, verified, reply } => {
                self.update_device(device, "verified", &verified, reply);
            }
            Request::Forget { device, reply } => {
                let result =
                    self.connection.execute("DELETE FROM devices WHERE device_id = ?1", params![device.to_string()]);
                self.publish_contacts();
                let _ = reply.send(result.map(|n| n > 0).map_err(StoreError::from));
            }
            Request::History { query, reply } => {
                let _ = reply.send(self.history(&query).map_err(StoreError::from));
            }
            Request::MarkMissedSeen { up_to, reply } => {
                let result = self.connection.execute(
                    "UPDATE calls SET seen = 1 WHERE outcome = ?1 AND seen = 0 AND (?2 IS NULL OR id <= ?2)",
                    params![Outcome::Missed.as_str(), up_to],
                );
                let _ = reply.send(result.map(|n| n as u64).map_err(StoreError::from));
            }
            Request::Flush { reply } => {
                let _ = reply.send(Ok(()));
            }
        }
        None
    }

    fn log(&mut self, result: rusqlite::Result<()>) {
        let failed = result.as_ref().err().map(|error| format!("writing the history fails: {error}"));
        if let Some(failing) = &self.failing {
            *failing.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = failed;
        }
        match result {
            Ok(()) => self.last_failure = None,
            Err(error) => {
                let message = format!(
                    "cannot write to the history database ({error}); calls go on without history until a write \
                     works again: free disk space, or make the data directory writable"
                );
                if self.last_failure.as_ref() != Some(&message) {
                    error!(%error, "cannot write to the history database; the call goes on");
                    if let Some(hub) = &self.hub {
                        hub.publish(Change::Problem(message.clone()));
                    }
                    self.last_failure = Some(message);
                }
            }
        }
    }

    fn insert_call(&self, entry: &HistoryEntry) -> rusqlite::Result<()> {
        self.connection
            .execute(
                "INSERT INTO calls (call_id, peer_id, peer_name, direction, started_at, outcome, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    entry.call_id.to_string(),
                    entry.peer.map(|p| p.to_string()),
                    entry.peer_name,
                    direction_word(entry.direction),
                    millis(entry.started_at),
                    entry.outcome.map(Outcome::as_str),
                    entry.detail,
                ],
            )
            .map(drop)
    }

    fn end_call(&self, entry: &HistoryEntry) -> rusqlite::Result<()> {
        // Completes the row this call started, the newest with its ID still on
        // (call IDs come from callers: an old row with the same ID is never touched);
        // a refused call has none, so its row is made here.
        let updated = self.connection.execute(
            "UPDATE calls SET peer_id = ?2, peer_name = ?3, setup_ms = ?4, talk_ms = ?5, outcome = ?6,
             detail = ?7, mos = ?8, loss = ?9, rtt_ms = ?10
             WHERE id = (SELECT MAX(id) FROM calls WHERE call_id = ?1 AND outcome IS NULL)",
            params![
                entry.call_id.to_string(),
                entry.peer.map(|p| p.to_string()),
                entry.peer_name,
                entry.setup.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
                i64::try_from(entry.talk.as_millis()).unwrap_or(i64::MAX),
                entry.outcome.unwrap_or(Outcome::Failed).as_str(),
                entry.detail,
                entry.mos,
                entry.loss,
                entry.round_trip.map(|d| d.as_secs_f64() * 1000.0),
            ],
        )?;
        if updated == 0 {
            self.insert_call(&HistoryEntry { outcome: None, ..entry.clone() })?;
            return self.end_call(entry);
        }
        Ok(())
    }

    /// Sets one column of a device's row (the device becomes known if it was not),
    /// publishes the known devices, then answers.
    fn update_device(
        &mut self,
        device: DeviceId,
        column: &'static str,
        value: &dyn rusqlite::ToSql,
        reply: oneshot::Sender<Result<(), StoreError>>,
    ) {
        let sql = format!("UPDATE devices SET {column} = ?2 WHERE device_id = ?1");
        let result = self
            .ensure_device(device)
            .and_then(|()| self.connection.execute(&sql, params![device.to_string(), value]).map(drop));
        self.publish_contacts();
        let _ = reply.send(result.map_err(StoreError::from));
    }

    fn ensure_device(&self, device: DeviceId) -> rusqlite::Result<()> {
        let now = millis(SystemTime::now());
        self.connection
            .execute(
                "INSERT INTO devices (device_id, first_seen, last_seen) VALUES (?1, ?2, ?2)
                 ON CONFLICT (device_id) DO NOTHING",
                params![device.to_string(), now],
            )
            .map(drop)
    }

    fn meet(&self, device: DeviceId, name: &str, at: SystemTime) -> rusqlite::Result<()> {
        let at = millis(at);
        self.connection.execute(
            "INSERT INTO devices (device_id, first_seen, last_seen) VALUES (?1, ?2, ?2)
             ON CONFLICT (device_id) DO UPDATE SET last_seen = excluded.last_seen",
            params![device.to_string(), at],
        )?;
        if !name.is_empty() {
            // A name another known device used stays that device's: a stranger that
            // took it is never remembered by it (it stays flagged).
            self.connection.execute(
                "INSERT INTO device_names (device_id, name, last_used)
                 SELECT ?1, ?2, ?3 WHERE NOT EXISTS (
                     SELECT 1 FROM device_names WHERE device_id != ?1 AND name = ?2 COLLATE NOCASE)
                 ON CONFLICT (device_id, name) DO UPDATE SET last_used = excluded.last_used",
                params![device.to_string(), name, at],
            )?;
        }
        Ok(())
    }

    fn history(&self, query: &HistoryQuery) -> rusqlite::Result<HistoryPage> {
        let mut statement = self.connection.prepare(
            "SELECT id, call_id, peer_id, peer_name, direction, started_at, setup_ms, talk_ms, outcome, detail,
                    mos, loss, rtt_ms
             FROM calls
             WHERE (?1 = 0 OR outcome = 'missed')
               AND (?2 IS NULL OR peer_id = ?2)
               AND (?3 IS NULL OR started_at >= ?3)
               AND (?4 IS NULL OR id < ?4)
               AND (?6 IS NULL OR peer_name = ?6 COLLATE NOCASE)
             ORDER BY id DESC LIMIT ?5",
        )?;
        let limit = i64::try_from(query.limit.clamp(1, 1000)).unwrap_or(1000);
        let rows = statement.query_map(
            params![
                query.missed_only,
                query.peer.map(|p| p.to_string()),
                query.since.map(millis),
                query.before,
                limit,
                query.peer_name
            ],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, i64>(5)?,
                    row.get::<_, Option<i64>>(6)?,
                    row.get::<_, i64>(7)?,
                    row.get::<_, Option<String>>(8)?,
                    row.get::<_, String>(9)?,
                    row.get::<_, Option<f64>>(10)?,
                    row.get::<_, Option<f64>>(11)?,
                    row.get::<_, Option<f64>>(12)?,
                ))
            },
        )?;
        let mut entries = Vec::new();
        for row in rows {
            let (id, call_id, peer, peer_name, direction, started, setup, talk, outcome, detail, mos, loss, rtt) = row?;
            let Ok(call_id) = CallId::try_from(call_id) else { continue };
            entries.push((
                id,
                HistoryEntry {
                    call_id,
                    peer: peer.and_then(|p| p.parse().ok()),
                    peer_name,
                    direction: if direction == "incoming" { Direction::Incoming } else { Direction::Outgoing },
                    started_at: from_millis(started),
                    setup: setup.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
                    talk: Duration::from_millis(u64::try_from(talk).unwrap_or(0)),
                    outcome: outcome.as_deref().and_then(Outcome::parse),
                    detail,
                    mos,
                    loss,
                    round_trip: rtt
                        .filter(|ms| ms.is_finite() && *ms >= 0.0)
                        .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
                },
            ));
        }
        let unseen_missed = self
            .connection
            .query_row("SELECT COUNT(*) FROM calls WHERE outcome = 'missed' AND seen = 0", [], |row| {
                row.get::<_, i64>(0)
            })
            .optional()?
            .unwrap_or(0);
        Ok(HistoryPage { entries, unseen_missed: u64::try_from(unseen_missed).unwrap_or(0) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Update;

    fn entry(call: &str, peer: DeviceId, direction: Direction, at: u64) -> HistoryEntry {
        HistoryEntry {
            call_id: CallId::try_from(call.to_owned()).unwrap(),
            peer: Some(peer),
            peer_name: "bob".into(),
            direction,
            started_at: UNIX_EPOCH + Duration::from_secs(1_800_000_000 + at),
            setup: None,
            talk: Duration::ZERO,
            outcome: None,
            detail: String::new(),
            mos: None,
            loss: None,
            round_trip: None,
        }
    }

    fn open(dir: &Path) -> Store {
        Store::open(dir, Retention::default(), EventHub::new())
    }

    #[tokio::test]
    async fn history_survives_a_restart_and_a_call_never_ended_reads_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let bob = DeviceId::from_hash([2; 32]);
        {
            let store = open(dir.path());
            store.call_started(entry("c1", bob, Direction::Incoming, 1));
            store.call_ended(HistoryEntry {
                outcome: Some(Outcome::Missed),
                ..entry("c1", bob, Direction::Incoming, 1)
            });
            store.call_started(entry("c2", bob, Direction::Outgoing, 2));
            store.met(bob, "bob".into(), SystemTime::now());
            // Every request before this one has been carried out when it answers.
            let page = store.history(HistoryQuery { limit: 10, ..HistoryQuery::default() }).await.unwrap();
            assert_eq!(page.entries.len(), 2);
            assert_eq!(page.entries[0].1.outcome, None, "c2 is still on");
            assert_eq!(page.unseen_missed, 1);
        }
        // The daemon stopped with c2 on (as after a SIGKILL): it reads interrupted.
        let store = open(dir.path());
        let page = store.history(HistoryQuery { limit: 10, ..HistoryQuery::default() }).await.unwrap();
        let outcomes: Vec<_> = page.entries.iter().map(|(_, e)| e.outcome).collect();
        assert_eq!(outcomes, [Some(Outcome::Interrupted), Some(Outcome::Missed)]);
        assert!(store.contacts().borrow().get(&bob).is_some(), "bob is known after the call");

        // Paging and filters.
        let first = store.history(HistoryQuery { limit: 1, ..HistoryQuery::default() }).await.unwrap();
        let before = first.entries.last().map(|(id, _)| *id);
        let second = store.history(HistoryQuery { limit: 1, before, ..HistoryQuery::default() }).await.unwrap();
        assert_eq!(second.entries[0].1.call_id.to_string(), "c1");
        let missed = store.history(HistoryQuery { limit: 10, missed_only: true, ..HistoryQuery::default() }).await;
        assert_eq!(missed.unwrap().entries.len(), 1);
        assert_eq!(store.mark_missed_seen(None).await.unwrap(), 1);
        let after = store.history(HistoryQuery { limit: 10, ..HistoryQuery::default() }).await.unwrap();
        assert_eq!(after.unseen_missed, 0);
    }

    #[tokio::test]
    async fn a_reused_call_id_never_rewrites_an_older_row_and_a_taken_name_is_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let (alice, impostor) = (DeviceId::from_hash([1; 32]), DeviceId::from_hash([9; 32]));
        store.call_started(entry("same", alice, Direction::Incoming, 1));
        store.call_ended(HistoryEntry {
            outcome: Some(Outcome::Answered),
            ..entry("same", alice, Direction::Incoming, 1)
        });
        store.call_ended(HistoryEntry {
            outcome: Some(Outcome::Blocked),
            ..entry("same", impostor, Direction::Incoming, 2)
        });
        let page = store.history(HistoryQuery { limit: 10, ..HistoryQuery::default() }).await.unwrap();
        let outcomes: Vec<_> = page.entries.iter().map(|(_, e)| e.outcome).collect();
        assert_eq!(outcomes, [Some(Outcome::Blocked), Some(Outcome::Answered)]);

        store.met(alice, "alice".into(), SystemTime::now());
        store.met(impostor, "Alice".into(), SystemTime::now());
        store.flush().await;
        let contacts = store.contacts();
        let contacts = contacts.borrow();
        assert_eq!(contacts.get(&impostor).map(|c| c.names.clone()), Some(vec![]), "alice's name stays hers");
        assert!(contacts.name_claimed_by_other(&impostor, "alice").is_some(), "still flagged");
    }

    #[tokio::test]
    async fn contacts_are_trusted_blocked_named_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let carol = DeviceId::from_hash([3; 32]);
        store.set_standing(carol, Standing::Blocked).await.unwrap();
        assert_eq!(store.contacts().borrow().get(&carol).map(|c| c.standing), Some(Standing::Blocked));
        store.set_alias(carol, Some("Carol".into())).await.unwrap();
        store.set_verified(carol, true).await.unwrap();
        let contact = store.contacts().borrow().get(&carol).cloned().unwrap();
        assert_eq!((contact.alias.as_deref(), contact.verified), (Some("Carol"), true));
        assert!(store.forget(carol).await.unwrap());
        assert!(store.contacts().borrow().get(&carol).is_none());
        assert!(!store.forget(carol).await.unwrap(), "already forgotten");
    }

    #[tokio::test]
    async fn a_damaged_or_newer_database_is_left_alone_and_said_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DATABASE_FILE);
        std::fs::write(&path, b"not a database at all, but the user's bytes").unwrap();
        let store = open(dir.path());
        let problem = store.problem().unwrap_or_default();
        assert!(problem.contains(&path.display().to_string()), "{problem}");
        let error = store.history(HistoryQuery::default()).await.unwrap_err().to_string();
        assert!(error.contains("unavailable"), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a database at all, but the user's bytes");

        let newer = tempfile::tempdir().unwrap();
        {
            let connection = Connection::open(newer.path().join(DATABASE_FILE)).unwrap();
            connection.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 99;").unwrap();
        }
        let store = open(newer.path());
        assert!(store.problem().is_some_and(|p| p.contains("schema 99")), "{:?}", store.problem());
        let connection = Connection::open(newer.path().join(DATABASE_FILE)).unwrap();
        let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
        assert_eq!(version, 99, "nothing was migrated or deleted");
    }

    /// The next problem the store publishes.
    async fn next_problem(feed: &mut crate::events::Subscription) -> String {
        loop {
            match feed.next().await {
                Some(Update::Change(published)) => match &published.change {
                    Change::Problem(message) => return message.clone(),
                    _ => continue,
                },
                Some(Update::State(..)) => continue,
                None => panic!("the hub closed"),
            }
        }
    }

    /// A tmpfs of `kib` KiB, unmounted when dropped. Mounting needs root, as
    /// the namespace tests do.
    struct SmallDisk(tempfile::TempDir);

    impl SmallDisk {
        fn mount(kib: u32) -> SmallDisk {
            let dir = tempfile::tempdir().unwrap();
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "voicelink-test"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "cannot mount a small tmpfs (this test needs root)");
            SmallDisk(dir)
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
        }
    }

    #[tokio::test]
    async fn a_full_disk_stops_writes_with_a_clear_problem_keeps_every_row_and_writing_resumes() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: mounting a small tmpfs needs root (CI runs as root)");
            return;
        }
        let disk = SmallDisk::mount(1024);
        let hub = EventHub::new();
        let mut feed = hub.subscribe();
        let store = Store::open(disk.0.path(), Retention::default(), hub.clone());
        assert_eq!(store.path(), Some(disk.0.path().join(DATABASE_FILE).as_path()));
        let bob = DeviceId::from_hash([2; 32]);
        let ended = |call: &str, at: u64| HistoryEntry {
            outcome: Some(Outcome::Answered),
            detail: "x".repeat(2000),
            ..entry(call, bob, Direction::Outgoing, at)
        };
        store.call_ended(ended("before", 0));
        store.flush().await;

        // Fill the disk to the last byte.
        let filler = disk.0.path().join("filler");
        {
            use std::io::Write as _;
            let mut file = std::fs::File::create(&filler).unwrap();
            while file.write_all(&[0; 4096]).is_ok() {}
        }
        for n in 1..=100 {
            store.call_ended(ended(&format!("full{n}"), n));
        }
        let problem = next_problem(&mut feed).await;
        assert!(problem.contains("full") && problem.contains("free disk space"), "{problem}");
        store.flush().await;
        assert!(store.problem().is_some_and(|p| p.contains("full")), "{:?}", store.problem());
        let page = store.history(HistoryQuery::default()).await.unwrap();
        assert!(page.entries.iter().any(|(_, e)| e.call_id.to_string() == "before"), "read while full");

        // Space again: the next write works, the problem clears, nothing written before is lost.
        std::fs::remove_file(&filler).unwrap();
        store.call_ended(ended("after", 200));
        store.flush().await;
        assert_eq!(store.problem(), None);
        let page = store.history(HistoryQuery { limit: 1000, ..HistoryQuery::default() }).await.unwrap();
        let calls: Vec<String> = page.entries.iter().map(|(_, e)| e.call_id.to_string()).collect();
        assert_eq!(calls.first().map(String::as_str), Some("after"));
        assert_eq!(calls.last().map(String::as_str), Some("before"));
        drop(store);
        let reopened = open(disk.0.path());
        assert_eq!(reopened.problem(), None, "the file is sound after the disk filled");
    }

    #[tokio::test]
    async fn a_database_locked_by_another_program_fails_writes_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let hub = EventHub::new();
        let mut feed = hub.subscribe();
        let store = Store::open(dir.path(), Retention::default(), hub.clone());
        let bob = DeviceId::from_hash([2; 32]);
        let ended =
            |call: &str| HistoryEntry { outcome: Some(Outcome::Answered), ..entry(call, bob, Direction::Outgoing, 0) };
        store.call_ended(ended("before"));
        store.flush().await;

        // Another program (the sqlite3 shell, say) holds the write lock.
        let other = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        store.call_ended(ended("while-locked"));
        let problem = next_problem(&mut feed).await;
        assert!(problem.contains("locked"), "{problem}");
        other.execute_batch("COMMIT").unwrap();
        store.call_ended(ended("after"));
        store.flush().await;
        assert_eq!(store.problem(), None);
        let page = store.history(HistoryQuery { limit: 10, ..HistoryQuery::default() }).await.unwrap();
        let calls: Vec<String> = page.entries.iter().map(|(_, e)| e.call_id.to_string()).collect();
        assert_eq!(calls, ["after", "before"]);
    }

    #[tokio::test]
    async fn retention_drops_the_oldest_calls() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention { max_age: Duration::from_secs(365 * 24 * 3600), max_entries: 3 };
        let store = Store::open(dir.path(), retention, EventHub::new());
        let bob = DeviceId::from_hash([2; 32]);
        for n in 0..5 {
            let ended = HistoryEntry {
                outcome: Some(Outcome::Answered),
                started_at: SystemTime::now() + Duration::from_secs(n),
                ..entry(&format!("c{n}"), bob, Direction::Outgoing, 0)
            };
            store.call_ended(ended);
        }
        // An entry older than the age limit goes too.
        let ancient = SystemTime::now() - Duration::from_secs(400 * 24 * 3600);
        store.call_ended(HistoryEntry {
            outcome: Some(Outcome::Missed),
            started_at: ancient,
            ..entry("old", bob, Direction::Incoming, 0)
        });
        let page = store.history(HistoryQuery { limit: 10, ..HistoryQuery::default() }).await.unwrap();
        let calls: Vec<String> = page.entries.iter().map(|(_, e)| e.call_id.to_string()).collect();
        assert_eq!(calls, ["c4", "c3", "c2"]);
    }
}
