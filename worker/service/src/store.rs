//! [`ObjectStorage`]: the three object operations the runner needs, as a trait so that tests
//! and benchmarks can wrap the real store (fault injection, counting) without a second code path.

use bytes::Bytes;
use futures::future::BoxFuture;
use inpaint_storage::{ObjectRef, PutRequest, Storage, StorageError, StoredObject};

/// Object reads and writes, as the runner uses them.
pub trait ObjectStorage: Send + Sync + 'static {
    /// Reads a whole object, refusing one larger than `max_bytes` from its size alone.
    fn get<'a>(
        &'a self,
        object: &'a ObjectRef,
        max_bytes: Option<u64>,
    ) -> BoxFuture<'a, Result<StoredObject, StorageError>>;

    /// Writes a whole object.
    fn put<'a>(
        &'a self,
        object: &'a ObjectRef,
        bytes: Bytes,
        request: &'a PutRequest,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// The object's size, or None when it does not exist.
    fn size_of<'a>(
        &'a self,
        object: &'a ObjectRef,
    ) -> BoxFuture<'a, Result<Option<u64>, StorageError>>;
}

impl ObjectStorage for Storage {
    fn get<'a>(
        &'a self,
        object: &'a ObjectRef,
        max_bytes: Option<u64>,
    ) -> BoxFuture<'a, Result<StoredObject, StorageError>> {
        Box::pin(Storage::get(self, object, max_bytes))
    }

    fn put<'a>(
        &'a self,
        object: &'a ObjectRef,
        bytes: Bytes,
        request: &'a PutRequest,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(Storage::put(self, object, bytes, request))
    }

    fn size_of<'a>(
        &'a self,
        object: &'a ObjectRef,
    ) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        Box::pin(Storage::size_of(self, object))
    }
}
