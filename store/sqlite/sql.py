"""Every SQL statement of the SQLite store, as module constants: sqlite3's statement cache
keys on the text, so each is prepared once per connection.

Tables: ``store/migrations.py`` creates them and says what each column means.
"""

from __future__ import annotations

from ..logrows import READING_LOGS

# -- a batch's ops ---------------------------------------------------------------------

UPSERT_CHARGER = """
INSERT INTO chargers (charger_id, protocol, vendor, model, serial, firmware, last_seen, last_boot)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
ON CONFLICT (charger_id) DO UPDATE SET
    protocol = excluded.protocol, vendor = excluded.vendor, model = excluded.model,
    serial = excluded.serial, firmware = excluded.firmware,
    last_seen = max(coalesce(last_seen, excluded.last_seen), excluded.last_seen),
    last_boot = max(coalesce(last_boot, excluded.last_boot), excluded.last_boot)"""

CHARGER_SEEN = """
INSERT INTO chargers (charger_id, last_seen) VALUES (?1, ?2)
ON CONFLICT (charger_id) DO UPDATE SET
    last_seen = max(coalesce(last_seen, excluded.last_seen), excluded.last_seen)"""

CONNECTOR_STATUS = """
INSERT INTO connectors (charger_id, evse_id, connector_id, status, error_code, info, at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
ON CONFLICT (charger_id, evse_id, connector_id) DO UPDATE SET
    status = excluded.status, error_code = excluded.error_code, info = excluded.info, at = excluded.at
WHERE excluded.at >= connectors.at"""

TX_ENSURE = """
INSERT INTO transactions (charger_id, tx_id, kind) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING"""

START_KEY = """
INSERT INTO tx_starts (charger_id, connector_id, id_tag, meter_start_wh, started_at, tx_id)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
ON CONFLICT DO UPDATE SET tx_id = tx_starts.tx_id
RETURNING tx_id"""

START_TX = """
UPDATE transactions SET connector_id = ?3, id_tag = ?4, start_reading_wh = ?5, started_at = ?6,
    reservation_id = ?7
WHERE charger_id = ?1 AND tx_id = ?2"""

STOP_OPEN = """
UPDATE transactions SET meter_stop_wh = ?3, stopped_at = ?4, stop_reason = ?5, stop_id_tag = ?6
WHERE charger_id = ?1 AND tx_id = ?2 AND stopped_at IS NULL"""

EVENT_SEQ = """
INSERT INTO tx_event_seqs (charger_id, tx_id, seq_no, event_type, trigger_reason, at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING"""

# ?1 charger ?2 tx ?3 at ?4 evse ?5 connector ?6 id_tag ?7 ended
EVENT_COMMON = """
UPDATE transactions SET
    evse_id = CASE WHEN ?4 != 0 THEN ?4 ELSE evse_id END,
    connector_id = CASE WHEN ?5 != 0 THEN ?5 ELSE connector_id END,
    id_tag = CASE WHEN ?6 != '' AND (?7 = 0 OR id_tag = '') THEN ?6 ELSE id_tag END,
    stop_id_tag = CASE WHEN ?6 != '' AND ?7 = 1 THEN ?6 ELSE stop_id_tag END,
    started_at = CASE WHEN ?7 = 0 THEN min(coalesce(started_at, ?3), ?3) ELSE started_at END
WHERE charger_id = ?1 AND tx_id = ?2"""

EVENT_BEGIN_READING = """
UPDATE transactions SET start_reading_wh = ?3 WHERE charger_id = ?1 AND tx_id = ?2"""

EVENT_END = """
UPDATE transactions SET stopped_at = ?3, stop_reason = ?4, meter_stop_wh = ?5
WHERE charger_id = ?1 AND tx_id = ?2 AND stopped_at IS NULL"""

TX_ID_NEXT = "SELECT next_id FROM tx_id_alloc WHERE name = 'ocpp16'"
TX_ID_TAKE = "UPDATE tx_id_alloc SET next_id = ? WHERE name = 'ocpp16'"

# fenced writes (ADR 0016)
FENCE_GEN = "SELECT gen FROM fence_gen WHERE id = 0"
FENCE_BUMP = "UPDATE fence_gen SET gen = gen + 1 WHERE id = 0 RETURNING gen"
FENCED_SINCE = "SELECT charger_id, epoch FROM charger_epochs WHERE gen > ?"
EPOCH_GET = "SELECT epoch FROM charger_epochs WHERE charger_id = ?"
EPOCH_PUT = """
INSERT INTO charger_epochs (charger_id, epoch, gen) VALUES (?1, ?2, ?3)
ON CONFLICT (charger_id) DO UPDATE SET epoch = excluded.epoch, gen = excluded.gen WHERE excluded.epoch > epoch"""

ID_TAG_GET = "SELECT status, expiry FROM id_tags WHERE tag = ?"
ID_TAG_PUT = ("INSERT INTO id_tags (tag, status, expiry) VALUES (?, ?, ?) ON CONFLICT (tag) DO UPDATE SET "
              "status = excluded.status, expiry = excluded.expiry")
ID_TAG_DELETE = "DELETE FROM id_tags WHERE tag = ?"
ID_TAG_PAGE = "SELECT tag, status, expiry FROM id_tags WHERE tag > ? ORDER BY tag LIMIT ?"

# -- the readings: the inbox, the log tables, the chunks -------------------------------


class LogSql:
    """The statements of one reading log table."""

    def __init__(self, b: int) -> None:
        self.table = log = f"reading_log_{b}"
        self.add = f"INSERT INTO {log} (rows, data) VALUES (?1, ?2)"
        self.take = f"SELECT rowid, rows, data FROM {log} ORDER BY rowid"
        self.drop_prefix = f"DELETE FROM {log} WHERE rowid <= ?1"
        self.span = f"SELECT count(*), min(rowid), coalesce(sum(length(data)), 0) FROM {log} WHERE rowid <= ?1"
        self.empty = f"DELETE FROM {log}"  # the whole table: SQLite's truncate, no row by row
        self.pending = f"SELECT EXISTS (SELECT 1 FROM {log})"
        # a read of one of its chargers: rows of that charger may still wait in the inbox
        self.read_pending = f"SELECT EXISTS (SELECT 1 FROM {log}) OR EXISTS (SELECT 1 FROM sample_inbox)"


LOGS = [LogSql(b) for b in range(READING_LOGS)]
LOG_PENDING = "SELECT EXISTS (SELECT 1 FROM sample_inbox) OR " + " OR ".join(
    f"EXISTS (SELECT 1 FROM reading_log_{b})" for b in range(READING_LOGS))
INBOX_COUNT = "SELECT coalesce(sum(rows), 0) FROM sample_inbox"
LOG_COUNT = "SELECT " + " + ".join(f"(SELECT coalesce(sum(rows), 0) FROM reading_log_{b})"
                                   for b in range(READING_LOGS)) + f" + ({INBOX_COUNT})"
# the inbox: a small batch's log rows packed into one row, moved into the log tables later
INBOX_ADD = "INSERT INTO sample_inbox (rows, data) VALUES (?1, ?2)"
INBOX_TAKE = "SELECT seq, rows, data FROM sample_inbox ORDER BY seq"
INBOX_DROP = "DELETE FROM sample_inbox WHERE seq <= ?1"
INBOX_SPAN = "SELECT count(*), min(seq), coalesce(sum(length(data)), 0) FROM sample_inbox WHERE seq <= ?1"
INBOX_PENDING = "SELECT EXISTS (SELECT 1 FROM sample_inbox)"
FOLD_SEQ = "UPDATE fold_seq SET n = n + 1 RETURNING n"
CHUNK_INSERT = """
INSERT INTO meter_chunks (charger_id, tx_id, chunk, low_wh, high_wh, last_at, last_connector, last_wh, rows, data)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"""
CHUNK_ROWS = "SELECT data FROM meter_chunks WHERE charger_id = ?1 AND tx_id = ?2 ORDER BY chunk"

# the newest reading of samples without a transaction, per connector: by at, of equals the last
LAST_READING = """
INSERT INTO last_readings (charger_id, connector_id, at, energy_wh, tx_id) VALUES (?1, ?2, ?3, ?4, '')
ON CONFLICT (charger_id, connector_id) DO UPDATE SET
    at = excluded.at, energy_wh = excluded.energy_wh, tx_id = excluded.tx_id
WHERE excluded.at >= last_readings.at"""

# -- the API's reads -------------------------------------------------------------------

CHARGER_COLUMNS = "charger_id, protocol, vendor, model, serial, firmware, last_seen, last_boot"
CHARGER_GET = f"SELECT {CHARGER_COLUMNS} FROM chargers WHERE charger_id = ?"
CHARGER_LIST = f"SELECT {CHARGER_COLUMNS} FROM chargers ORDER BY charger_id"
CHARGER_PAGE = f"SELECT {CHARGER_COLUMNS} FROM chargers WHERE charger_id > ? ORDER BY charger_id LIMIT ?"
CONNECTORS_GET = ("SELECT evse_id, connector_id, status, error_code, info, at FROM connectors "
                  "WHERE charger_id = ? ORDER BY evse_id, connector_id")

# the readings of a transaction t, from its chunks: the lowest not closing,
_LOWEST = """(SELECT min(low_wh) FROM meter_chunks c WHERE c.charger_id = t.charger_id AND c.tx_id = t.tx_id)"""
# the highest,
_HIGHEST = """(SELECT max(high_wh) FROM meter_chunks c WHERE c.charger_id = t.charger_id AND c.tx_id = t.tx_id)"""
# and the newest: by at, then the lowest connector (2.0.1 events after Started mostly carry 0);
# of a repeated key, the last reading (the later chunk's)
_NEWEST = """(SELECT {} FROM meter_chunks c WHERE c.charger_id = t.charger_id AND c.tx_id = t.tx_id
        ORDER BY c.last_at DESC, c.last_connector, c.chunk DESC LIMIT 1)"""
# a transaction with its readings (the lowest and the highest where the energy rule needs them);
# its columns are unpacked by name in ``reads._tx_dict``
TX_SELECT = f"""
SELECT charger_id, tx_id, connector_id, evse_id, id_tag, kind, start_reading_wh, meter_stop_wh, started_at,
    stopped_at, stop_reason, stop_id_tag, reservation_id,
    CASE WHEN start_reading_wh IS NULL THEN {_LOWEST} END,
    CASE WHEN kind != 16 OR meter_stop_wh IS NULL OR start_reading_wh IS NULL THEN {_HIGHEST} END,
    {_NEWEST.format("c.last_wh")}, {_NEWEST.format("c.last_at")}
FROM {{}} t"""

TX_GET = TX_SELECT.format("transactions") + " WHERE charger_id = ?1 AND tx_id = ?2"
TX_ORDER = "ORDER BY started_at DESC NULLS LAST, charger_id, tx_id"

# newest reading per connector: samples without a transaction, and each transaction's own
LAST_READINGS = f"""
SELECT connector_id, energy_wh, at, tx_id FROM (
    SELECT connector_id, energy_wh, at, tx_id,
           row_number() OVER (PARTITION BY connector_id ORDER BY at DESC, tx_id DESC) AS rn
    FROM (SELECT connector_id, energy_wh, at, tx_id FROM last_readings WHERE charger_id = ?1
          UNION ALL
          SELECT connector_id, {_NEWEST.format("c.last_wh")}, {_NEWEST.format("c.last_at")} AS at, tx_id
          FROM transactions t WHERE charger_id = ?1)
    WHERE at IS NOT NULL)
WHERE rn = 1 ORDER BY connector_id"""


def tx_page(charger: bool, active: bool | None) -> str:
    """A page of transactions, newest first, with their readings (derived for the page's rows
    only); its parameters: the charger id when ``charger``, then the limit."""
    where = []
    if charger:
        where.append("charger_id = ?")
    if active is not None:
        where.append("stopped_at IS NULL" if active else "stopped_at IS NOT NULL")
    page = "SELECT * FROM transactions"
    if where:
        page += " WHERE " + " AND ".join(where)
    return f"WITH page AS MATERIALIZED ({page} {TX_ORDER} LIMIT ?) {TX_SELECT.format('page')} {TX_ORDER}"


def tx_keyset(charger: bool, active: bool | None, started: bool, after: bool) -> str:
    """A keyset page of transactions with their readings, in the order of an index:
    ``transactions_started`` (started_at, then the primary key) or, for one charger,
    ``transactions_charger_started`` (charger_id, started_at, tx_id), both read backwards:
    started_at DESC, charger_id DESC, tx_id DESC. ``started``: the rows with a start
    (else those without one). Parameters: the charger id when ``charger``; when ``after``,
    the previous page's last key (started_at, charger_id, tx_id; minus the columns the
    filter fixes); the limit."""
    where = ["started_at IS NOT NULL" if started else "started_at IS NULL"]
    if charger:
        where.append("charger_id = ?")
        if after:
            where.append("(started_at, tx_id) < (?, ?)" if started else "tx_id < ?")
    elif after:
        where.append("(started_at, charger_id, tx_id) < (?, ?, ?)" if started else "(charger_id, tx_id) < (?, ?)")
    if active is not None:
        where.append("stopped_at IS NULL" if active else "stopped_at IS NOT NULL")
    order = "ORDER BY started_at DESC, charger_id DESC, tx_id DESC"
    page = f"SELECT * FROM transactions WHERE {' AND '.join(where)} {order} LIMIT ?"
    return f"WITH page AS MATERIALIZED ({page}) {TX_SELECT.format('page')} {order}"
# -- charger credentials and security events (store/chargers.py) -----------------------

CREDS_GET = """
SELECT charger_id, security_profile, password_hash, pending_password_hash, previous_password_hash, verifier
FROM charger_credentials WHERE charger_id = ?"""
CREDS_PUT = """
INSERT INTO charger_credentials (charger_id, security_profile, password_hash, pending_password_hash,
    previous_password_hash, verifier, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
ON CONFLICT (charger_id) DO UPDATE SET security_profile = ?2, password_hash = ?3,
    pending_password_hash = ?4, previous_password_hash = ?5, verifier = ?6, updated_at = ?7"""
CREDS_VERIFIER_PUT = "UPDATE charger_credentials SET verifier = ? WHERE charger_id = ?"
CREDS_DELETE = "DELETE FROM charger_credentials WHERE charger_id = ?"
CREDS_IDS = "SELECT charger_id FROM charger_credentials ORDER BY charger_id LIMIT ?"
SECURITY_EVENT_ADD = """
INSERT INTO security_events (charger_id, type, at, tech_info, received_at) VALUES (?, ?, ?, ?, ?)"""
SECURITY_EVENTS = """
SELECT charger_id, type, at, tech_info, received_at FROM security_events
WHERE charger_id = ? ORDER BY id DESC LIMIT ?"""
