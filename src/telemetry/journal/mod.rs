//! journald as a source: the file format ([`format`]) and a directory reader ([`reader`]).

pub mod format;
pub mod payload;
pub mod reader;

pub use reader::{Cursor, Filter, JournalError, JournalReader, JournalRecord, Poll, ReaderStats};
