//! One export object: an hour of `audit_events` rows as a Parquet file (storage §8.7), written
//! by the export leader and read back by `caracal audit verify --export`.
//!
//! Each row carries the OCSF columns of an API Activity event (class 6003, `type_uid` 600301,
//! flattened with `_` for nested objects, so SIEM loaders can map them), then every column of
//! the ledger row, chain columns included, so the object verifies offline without Postgres.
//! The OCSF columns are derived from the ledger columns only ([`COLUMNS`] says how); the
//! reader derives them again and reports a row whose OCSF values disagree with its own
//! ledger values, so the part a SIEM reads cannot be changed apart from the chained part.
//!
//! The schema is one table, [`COLUMNS`]: the writer, the reader and the Parquet message type
//! are all built from it. JSON columns hold JSON text; `bytea` columns are binary; times are
//! UTC timestamps (ledger columns in µs, the OCSF `time` in ms, as OCSF defines it).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use parquet::{
    basic::Compression,
    data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type},
    file::{
        properties::WriterProperties,
        reader::{ChunkReader, FileReader, SerializedFileReader},
        writer::SerializedFileWriter,
    },
    record::Field,
    schema::{parser::parse_message_type, types::Type},
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::AuditRow;

/// OCSF class of every exported row (API Activity), as storage §8.7 fixes it.
pub const OCSF_CLASS_UID: i32 = 6003;
/// OCSF `type_uid`: class × 100 + activity.
pub const OCSF_TYPE_UID: i64 = 600_301;
/// The OCSF schema version the columns follow.
pub const OCSF_VERSION: &str = "1.3.0";
/// Rows per Parquet row group written by the export.
pub const ROW_GROUP_ROWS: usize = 16_384;

/// How a column is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// UTF-8 text (`binary (STRING)`).
    Text,
    /// JSON text (`binary (STRING)`; the ledger's `jsonb` columns).
    Json,
    /// Bytes (`binary`; the ledger's `bytea` columns).
    Binary,
    /// `int32 (INTEGER(16,true))`.
    Int16,
    /// `int32`.
    Int32,
    /// `int64`.
    Int64,
    /// `int64 (TIMESTAMP(MICROS,true))`.
    Micros,
    /// `int64 (TIMESTAMP(MILLIS,true))`.
    Millis,
}

/// One value of a row, by column.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Bytes(Vec<u8>),
    Int(i32),
    Long(i64),
}

impl Cell {
    fn text(value: &str) -> Self {
        Self::Bytes(value.as_bytes().to_vec())
    }
    fn text_option(value: Option<&str>) -> Self {
        value.map_or(Self::Null, Self::text)
    }
    fn json(value: Option<&Value>) -> Self {
        value.map_or(Self::Null, |v| Self::Bytes(v.to_string().into_bytes()))
    }
    fn binary(value: Option<&[u8]>) -> Self {
        value.map_or(Self::Null, |b| Self::Bytes(b.to_vec()))
    }
}

/// One column: its name, storage, whether it may be null, and how a row gives its value.
struct Column {
    name: &'static str,
    kind: Kind,
    required: bool,
    value: fn(&AuditRow) -> Cell,
}

/// Every column of an export object, in file order: the OCSF columns, then the ledger row.
#[rustfmt::skip]
static COLUMNS: [Column; 43] = [
    // OCSF API Activity (6003), derived from the ledger columns.
    Column { name: "time", kind: Kind::Millis, required: true, value: |r| Cell::Long(r.occurred_at.timestamp_millis()) },
    Column { name: "class_uid", kind: Kind::Int32, required: true, value: |_| Cell::Int(OCSF_CLASS_UID) },
    Column { name: "class_name", kind: Kind::Text, required: true, value: |_| Cell::text("API Activity") },
    Column { name: "category_uid", kind: Kind::Int32, required: true, value: |_| Cell::Int(6) },
    Column { name: "category_name", kind: Kind::Text, required: true, value: |_| Cell::text("Application Activity") },
    Column { name: "activity_id", kind: Kind::Int32, required: true, value: |_| Cell::Int(1) },
    Column { name: "activity_name", kind: Kind::Text, required: true, value: |_| Cell::text("Create") },
    Column { name: "type_uid", kind: Kind::Int64, required: true, value: |_| Cell::Long(OCSF_TYPE_UID) },
    Column { name: "type_name", kind: Kind::Text, required: true, value: |_| Cell::text("API Activity: Create") },
    Column { name: "severity_id", kind: Kind::Int32, required: true, value: |_| Cell::Int(1) },
    Column { name: "severity", kind: Kind::Text, required: true, value: |_| Cell::text("Informational") },
    Column { name: "status_id", kind: Kind::Int32, required: true, value: |r| Cell::Int(status(r).0) },
    Column { name: "status", kind: Kind::Text, required: true, value: |r| Cell::text(status(r).1) },
    Column { name: "status_detail", kind: Kind::Text, required: false, value: |r| Cell::text_option(r.evaluation_status.as_deref()) },
    Column { name: "api_operation", kind: Kind::Text, required: true, value: |r| Cell::text(&r.event_type) },
    Column { name: "api_request_uid", kind: Kind::Text, required: false, value: |r| Cell::text_option(r.request_id.as_deref()) },
    Column { name: "metadata_uid", kind: Kind::Text, required: true, value: |r| Cell::text(&r.id) },
    Column { name: "metadata_version", kind: Kind::Text, required: true, value: |_| Cell::text(OCSF_VERSION) },
    Column { name: "metadata_product_name", kind: Kind::Text, required: true, value: |_| Cell::text("Caracal") },
    Column { name: "metadata_product_vendor_name", kind: Kind::Text, required: true, value: |_| Cell::text("Caracal") },
    Column { name: "metadata_logged_time", kind: Kind::Millis, required: true, value: |r| Cell::Long(r.ingested_at.timestamp_millis()) },
    Column { name: "metadata_tenant_uid", kind: Kind::Text, required: true, value: |r| Cell::text(&r.zone_id) },
    // The ledger row (storage §8.1), every column, so the object verifies offline.
    Column { name: "id", kind: Kind::Text, required: true, value: |r| Cell::text(&r.id) },
    Column { name: "zone_id", kind: Kind::Text, required: true, value: |r| Cell::text(&r.zone_id) },
    Column { name: "event_type", kind: Kind::Text, required: true, value: |r| Cell::text(&r.event_type) },
    Column { name: "request_id", kind: Kind::Text, required: false, value: |r| Cell::text_option(r.request_id.as_deref()) },
    Column { name: "decision", kind: Kind::Text, required: false, value: |r| Cell::text_option(r.decision.as_deref()) },
    Column { name: "policy_set_id", kind: Kind::Text, required: false, value: |r| Cell::text_option(r.policy_set_id.as_deref()) },
    Column { name: "policy_set_version_id", kind: Kind::Text, required: false, value: |r| Cell::text_option(r.policy_set_version_id.as_deref()) },
    Column { name: "manifest_sha", kind: Kind::Text, required: false, value: |r| Cell::text_option(r.manifest_sha.as_deref()) },
    Column { name: "evaluation_status", kind: Kind::Text, required: false, value: |r| Cell::text_option(r.evaluation_status.as_deref()) },
    Column { name: "determining_policies_json", kind: Kind::Json, required: false, value: |r| Cell::json(r.determining_policies_json.as_ref()) },
    Column { name: "diagnostics_json", kind: Kind::Json, required: false, value: |r| Cell::json(r.diagnostics_json.as_ref()) },
    Column { name: "metadata_json", kind: Kind::Json, required: false, value: |r| Cell::json(r.metadata_json.as_ref()) },
    Column { name: "occurred_at", kind: Kind::Micros, required: true, value: |r| Cell::Long(r.occurred_at.timestamp_micros()) },
    Column { name: "ingested_at", kind: Kind::Micros, required: true, value: |r| Cell::Long(r.ingested_at.timestamp_micros()) },
    Column { name: "hash_version", kind: Kind::Int16, required: true, value: |r| Cell::Int(i32::from(r.hash_version)) },
    Column { name: "content_sha256", kind: Kind::Binary, required: true, value: |r| Cell::binary(Some(&r.content_sha256)) },
    Column { name: "prev_content_sha256", kind: Kind::Binary, required: false, value: |r| Cell::binary(r.prev_content_sha256.as_deref()) },
    Column { name: "chain_seq", kind: Kind::Int64, required: true, value: |r| Cell::Long(r.chain_seq) },
    Column { name: "chain_hmac", kind: Kind::Binary, required: false, value: |r| Cell::binary(r.chain_hmac.as_deref()) },
    Column { name: "chain_key_id", kind: Kind::Text, required: false, value: |r| Cell::text_option(r.chain_key_id.as_deref()) },
    Column { name: "ingest_signature", kind: Kind::Binary, required: false, value: |r| Cell::binary(r.ingest_signature.as_deref()) },
];

/// Where the OCSF columns end and the ledger row begins.
const LEDGER_START: usize = 22;

/// OCSF `status_id` and `status` of a decision: allow → Success, deny → Failure.
fn status(row: &AuditRow) -> (i32, &'static str) {
    match row.decision.as_deref() {
        Some("allow") => (1, "Success"),
        Some("deny") => (2, "Failure"),
        _ => (0, "Unknown"),
    }
}

/// The Parquet message type of [`COLUMNS`].
fn message_type() -> String {
    let mut message = String::from("message caracal_audit_event {\n");
    for column in &COLUMNS {
        let (physical, annotation) = match column.kind {
            Kind::Text | Kind::Json => ("binary", " (STRING)"),
            Kind::Binary => ("binary", ""),
            Kind::Int16 => ("int32", " (INTEGER(16,true))"),
            Kind::Int32 => ("int32", ""),
            Kind::Int64 => ("int64", ""),
            Kind::Micros => ("int64", " (TIMESTAMP(MICROS,true))"),
            Kind::Millis => ("int64", " (TIMESTAMP(MILLIS,true))"),
        };
        let repetition = if column.required {
            "required"
        } else {
            "optional"
        };
        message.push_str(&format!(
            "  {repetition} {physical} {}{annotation};\n",
            column.name
        ));
    }
    message.push('}');
    message
}

/// The schema of [`COLUMNS`].
fn schema() -> Result<Arc<Type>, ObjectError> {
    parse_message_type(&message_type())
        .map(Arc::new)
        .map_err(|error| ObjectError(format!("export schema: {error}")))
}

/// An object could not be written or read. `Display` names the cause, never row content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ObjectError(String);

impl From<parquet::errors::ParquetError> for ObjectError {
    fn from(error: parquet::errors::ParquetError) -> Self {
        Self(format!("parquet: {error}"))
    }
}

/// A writer that hashes what passes through it, so the manifest's SHA-256 needs no second
/// read of the object.
#[derive(Debug)]
pub struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: std::io::Write> std::io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(buf.get(..written).unwrap_or_default());
        Ok(written)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes one export object: row groups of rows in ledger order, then the footer.
pub struct ObjectWriter<W: std::io::Write + Send> {
    file: SerializedFileWriter<Hashing<W>>,
}

impl<W: std::io::Write + Send> std::fmt::Debug for ObjectWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectWriter").finish_non_exhaustive()
    }
}

impl<W: std::io::Write + Send> ObjectWriter<W> {
    /// Starts an object on `sink`.
    ///
    /// # Errors
    ///
    /// [`ObjectError`] when the sink fails.
    pub fn new(sink: W) -> Result<Self, ObjectError> {
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("caracal {}", env!("CARGO_PKG_VERSION")))
            .build();
        let file = SerializedFileWriter::new(
            Hashing {
                inner: sink,
                hasher: Sha256::new(),
            },
            schema()?,
            Arc::new(properties),
        )?;
        Ok(Self { file })
    }

    /// Writes `rows` as one row group (nothing for no rows).
    ///
    /// # Errors
    ///
    /// [`ObjectError`] when encoding or the sink fails.
    pub fn write_group(&mut self, rows: &[AuditRow]) -> Result<(), ObjectError> {
        self.write_cells(rows, |column, row| (column.value)(row))
    }

    /// Writes `rows` as one row group with the values `cell` gives.
    fn write_cells(
        &mut self,
        rows: &[AuditRow],
        cell: impl Fn(&Column, &AuditRow) -> Cell,
    ) -> Result<(), ObjectError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut group = self.file.next_row_group()?;
        let mut index = 0;
        while let Some(mut writer) = group.next_column()? {
            let column = COLUMNS
                .get(index)
                .ok_or_else(|| ObjectError("export schema: more columns than the table".into()))?;
            index += 1;
            let cells: Vec<Cell> = rows.iter().map(|row| cell(column, row)).collect();
            let levels: Option<Vec<i16>> = (!column.required).then(|| {
                cells
                    .iter()
                    .map(|cell| i16::from(*cell != Cell::Null))
                    .collect()
            });
            let present = cells.into_iter().filter(|cell| *cell != Cell::Null);
            match column.kind {
                Kind::Text | Kind::Json | Kind::Binary => {
                    let values: Vec<ByteArray> = present
                        .map(|cell| match cell {
                            Cell::Bytes(bytes) => Ok(ByteArray::from(bytes)),
                            _ => Err(mistyped(column.name)),
                        })
                        .collect::<Result<_, _>>()?;
                    writer.typed::<ByteArrayType>().write_batch(
                        &values,
                        levels.as_deref(),
                        None,
                    )?;
                }
                Kind::Int16 | Kind::Int32 => {
                    let values: Vec<i32> = present
                        .map(|cell| match cell {
                            Cell::Int(value) => Ok(value),
                            _ => Err(mistyped(column.name)),
                        })
                        .collect::<Result<_, _>>()?;
                    writer
                        .typed::<Int32Type>()
                        .write_batch(&values, levels.as_deref(), None)?;
                }
                Kind::Int64 | Kind::Micros | Kind::Millis => {
                    let values: Vec<i64> = present
                        .map(|cell| match cell {
                            Cell::Long(value) => Ok(value),
                            _ => Err(mistyped(column.name)),
                        })
                        .collect::<Result<_, _>>()?;
                    writer
                        .typed::<Int64Type>()
                        .write_batch(&values, levels.as_deref(), None)?;
                }
            }
            writer.close()?;
        }
        group.close()?;
        Ok(())
    }

    /// Writes the footer; returns the sink and the SHA-256 of everything written to it.
    ///
    /// # Errors
    ///
    /// [`ObjectError`] when the sink fails.
    pub fn finish(self) -> Result<(W, [u8; 32]), ObjectError> {
        let hashing = self.file.into_inner()?;
        Ok((hashing.inner, hashing.hasher.finalize().into()))
    }
}

fn mistyped(column: &str) -> ObjectError {
    ObjectError(format!(
        "export schema: column {column} has a value of another type"
    ))
}

/// Encodes `rows` as a whole object in memory (tests and small tools).
///
/// # Errors
///
/// [`ObjectError`] when encoding fails.
pub fn encode(rows: &[AuditRow]) -> Result<Vec<u8>, ObjectError> {
    let mut writer = ObjectWriter::new(Vec::new())?;
    for group in rows.chunks(ROW_GROUP_ROWS) {
        writer.write_group(group)?;
    }
    Ok(writer.finish()?.0)
}

/// Decodes an object row by row: `each` gets its rows in file order; the result is the
/// per-row problems, each naming the row's position (1-based) and the column: a row whose
/// OCSF columns disagree with its ledger columns (still passed on, its chain checked), or
/// whose values cannot be a ledger row (not passed on). Rows are streamed, so an object of any size is
/// checked in bounded memory (from a file; a bucket object is read into memory first).
///
/// # Errors
///
/// [`ObjectError`] when `reader` is not a Parquet file of this layout, or cannot be read.
pub fn decode<R: ChunkReader + 'static>(
    reader: R,
    mut each: impl FnMut(AuditRow),
) -> Result<Vec<String>, ObjectError> {
    let reader = SerializedFileReader::new(reader)
        .map_err(|_unreadable| ObjectError("not a readable Parquet file".into()))?;
    let expected = schema()?;
    if reader.metadata().file_metadata().schema() != expected.as_ref() {
        return Err(ObjectError(
            "not an audit export object (its Parquet schema differs from this layout)".into(),
        ));
    }
    let mut problems = Vec::new();
    let rows = reader.get_row_iter(None)?;
    for (index, row) in rows.enumerate() {
        let position = index + 1;
        let row = row?;
        let cells = row
            .get_column_iter()
            .map(|(_, field)| cell_of(field))
            .collect::<Vec<_>>();
        match to_row(&cells) {
            Ok(audit_row) => {
                for (column, cell) in COLUMNS.iter().zip(&cells).take(LEDGER_START) {
                    if Some((column.value)(&audit_row)) != *cell {
                        problems.push(format!(
                            "row {position}: OCSF column {} disagrees with the ledger columns",
                            column.name
                        ));
                    }
                }
                each(audit_row);
            }
            Err(why) => problems.push(format!("row {position}: {why}")),
        }
    }
    Ok(problems)
}

fn cell_of(field: &Field) -> Option<Cell> {
    Some(match field {
        Field::Null => Cell::Null,
        Field::Str(text) => Cell::Bytes(text.as_bytes().to_vec()),
        Field::Bytes(bytes) => Cell::Bytes(bytes.data().to_vec()),
        Field::Short(value) => Cell::Int(i32::from(*value)),
        Field::Int(value) => Cell::Int(*value),
        Field::Long(value) | Field::TimestampMicros(value) | Field::TimestampMillis(value) => {
            Cell::Long(*value)
        }
        _ => return None,
    })
}

/// The ledger row of one file row (`cells` in [`COLUMNS`] order).
fn to_row(cells: &[Option<Cell>]) -> Result<AuditRow, String> {
    let ledger = Cells {
        cells: cells.get(LEDGER_START..).unwrap_or_default(),
        columns: COLUMNS.get(LEDGER_START..).unwrap_or_default(),
    };
    Ok(AuditRow {
        id: ledger.text("id")?,
        zone_id: ledger.text("zone_id")?,
        event_type: ledger.text("event_type")?,
        request_id: ledger.text_option("request_id")?,
        decision: ledger.text_option("decision")?,
        policy_set_id: ledger.text_option("policy_set_id")?,
        policy_set_version_id: ledger.text_option("policy_set_version_id")?,
        manifest_sha: ledger.text_option("manifest_sha")?,
        evaluation_status: ledger.text_option("evaluation_status")?,
        determining_policies_json: ledger.json("determining_policies_json")?,
        diagnostics_json: ledger.json("diagnostics_json")?,
        metadata_json: ledger.json("metadata_json")?,
        occurred_at: ledger.time("occurred_at")?,
        ingested_at: ledger.time("ingested_at")?,
        hash_version: i16::try_from(ledger.int("hash_version")?)
            .map_err(|_range| "column hash_version is out of range".to_owned())?,
        content_sha256: ledger
            .bytes("content_sha256")?
            .ok_or_else(|| "column content_sha256 is null".to_owned())?,
        prev_content_sha256: ledger.bytes("prev_content_sha256")?,
        chain_seq: ledger.long("chain_seq")?,
        chain_hmac: ledger.bytes("chain_hmac")?,
        chain_key_id: ledger.text_option("chain_key_id")?,
        ingest_signature: ledger.bytes("ingest_signature")?,
    })
}

/// The ledger cells of one row, read by column name.
struct Cells<'a> {
    cells: &'a [Option<Cell>],
    columns: &'a [Column],
}

impl Cells<'_> {
    fn get(&self, name: &str) -> Result<&Cell, String> {
        let index = self
            .columns
            .iter()
            .position(|column| column.name == name)
            .ok_or_else(|| format!("column {name} is missing"))?;
        self.cells
            .get(index)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("column {name} has an unexpected type"))
    }
    fn bytes(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        match self.get(name)? {
            Cell::Null => Ok(None),
            Cell::Bytes(bytes) => Ok(Some(bytes.clone())),
            _ => Err(format!("column {name} is not bytes")),
        }
    }
    fn text_option(&self, name: &str) -> Result<Option<String>, String> {
        self.bytes(name)?
            .map(|bytes| {
                String::from_utf8(bytes).map_err(|_bad| format!("column {name} is not UTF-8"))
            })
            .transpose()
    }
    fn text(&self, name: &str) -> Result<String, String> {
        self.text_option(name)?
            .ok_or_else(|| format!("column {name} is null"))
    }
    fn json(&self, name: &str) -> Result<Option<Value>, String> {
        self.bytes(name)?
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|_bad| format!("column {name} is not JSON"))
            })
            .transpose()
    }
    fn long(&self, name: &str) -> Result<i64, String> {
        match self.get(name)? {
            Cell::Long(value) => Ok(*value),
            _ => Err(format!("column {name} is not a 64-bit integer")),
        }
    }
    fn int(&self, name: &str) -> Result<i32, String> {
        match self.get(name)? {
            Cell::Int(value) => Ok(*value),
            _ => Err(format!("column {name} is not an integer")),
        }
    }
    fn time(&self, name: &str) -> Result<DateTime<Utc>, String> {
        DateTime::from_timestamp_micros(self.long(name)?)
            .ok_or_else(|| format!("column {name} is out of range"))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn the_message_type_has_every_column_once_and_the_ledger_part_starts_with_id() {
        let names: std::collections::HashSet<&str> = COLUMNS.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), COLUMNS.len());
        assert_eq!(COLUMNS[LEDGER_START].name, "id");
        assert_eq!(COLUMNS[LEDGER_START - 1].name, "metadata_tenant_uid");
        let schema = schema().unwrap();
        assert_eq!(schema.get_fields().len(), COLUMNS.len());
    }

    fn row(decision: &str) -> AuditRow {
        let at = DateTime::from_timestamp_micros(1_779_364_801_000_000).unwrap();
        AuditRow {
            id: "evt-1".into(),
            zone_id: "zone-1".into(),
            event_type: "gateway_resource_request".into(),
            request_id: Some("req-1".into()),
            decision: Some(decision.into()),
            policy_set_id: None,
            policy_set_version_id: None,
            manifest_sha: None,
            evaluation_status: Some("evaluated".into()),
            determining_policies_json: None,
            diagnostics_json: None,
            metadata_json: Some(serde_json::json!({"k": "v"})),
            occurred_at: at,
            ingested_at: at,
            hash_version: 1,
            content_sha256: vec![1; 32],
            prev_content_sha256: None,
            chain_seq: 1,
            chain_hmac: Some(vec![2; 32]),
            chain_key_id: Some("k1".into()),
            ingest_signature: None,
        }
    }

    #[test]
    fn ocsf_columns_follow_the_ledger_columns() {
        let rows = [row("allow"), row("deny"), row("partial")];
        let problems = decode(Bytes::from(encode(&rows).unwrap()), |_| {}).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let file = SerializedFileReader::new(Bytes::from(encode(&rows).unwrap())).unwrap();
        let first = file.get_row_iter(None).unwrap().next().unwrap().unwrap();
        let value = |name: &str| {
            first
                .get_column_iter()
                .find(|(column, _)| column.as_str() == name)
                .map(|(_, field)| field.clone())
                .unwrap()
        };
        assert_eq!(value("class_uid"), Field::Int(6003));
        assert_eq!(value("type_uid"), Field::Long(600_301));
        assert_eq!(value("status_id"), Field::Int(1));
        assert_eq!(value("time"), Field::TimestampMillis(1_779_364_801_000));
        assert_eq!(value("metadata_uid"), Field::Str("evt-1".into()));
        assert_eq!(
            value("api_operation"),
            Field::Str("gateway_resource_request".into())
        );
    }

    #[test]
    fn a_row_whose_ocsf_columns_were_changed_apart_from_its_ledger_columns_is_named() {
        let rows = [row("allow"), row("deny")];
        let mut writer = ObjectWriter::new(Vec::new()).unwrap();
        writer
            .write_cells(&rows, |column, row| match column.name {
                // The deny shown to a SIEM as a success.
                "status_id" => Cell::Int(1),
                _ => (column.value)(row),
            })
            .unwrap();
        let (bytes, _sha) = writer.finish().unwrap();
        let mut decoded = Vec::new();
        let problems = decode(Bytes::from(bytes), |row| decoded.push(row)).unwrap();
        assert_eq!(
            problems,
            ["row 2: OCSF column status_id disagrees with the ledger columns"]
        );
        assert_eq!(
            decoded, rows,
            "the ledger part still goes on to the chain checks"
        );
    }
}
