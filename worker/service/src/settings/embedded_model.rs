//! The tiny random-weight test model compiled into the binary (`engine.model =
//! "embedded-tiny"`): its files, and writing them out to a folder the engine can load, so that
//! a copied binary (a container image, another machine) runs it without the source tree.

use std::path::{Path, PathBuf};

use super::{SettingsError, invalid};

/// The value of `engine.model` that names the tiny random-weight test model compiled into the
/// binary (`tests/parity/fixtures/models/tiny-sd-a`; it paints noise).
pub const EMBEDDED_TINY: &str = "embedded-tiny";

/// The warning logged on every start on [`EMBEDDED_TINY`].
pub const EMBEDDED_TINY_WARNING: &str = "engine.model = \"embedded-tiny\": serving the tiny \
     random-weight test model, which paints noise; name a real stable-diffusion-inpainting folder \
     for production";

/// Generates the table of embedded tiny-model files from their paths inside the model folder.
macro_rules! embedded_tiny_files {
    ($($path:literal),* $(,)?) => {
        &[$((
            $path,
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/parity/fixtures/models/tiny-sd-a/",
                $path
            )) as &[u8],
        )),*]
    };
}

/// Every file of the tiny model, by its path inside the model folder (2.6 MB in all). A test
/// checks that this list is exactly the fixture folder's files, byte for byte.
pub const EMBEDDED_TINY_FILES: &[(&str, &[u8])] = embedded_tiny_files![
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
];

/// Writes the embedded tiny model to a folder the engine can load and returns it:
/// `$INPAINT_CACHE_DIR` (or the system temporary folder, `$TMPDIR`) `/inpaint-worker-embedded-tiny-<hash>`,
/// where `<hash>` is a digest of the files. A folder that is already there with exactly these
/// bytes is reused (concurrent workers on one machine share it); one with other bytes (partly
/// written, edited) is replaced. Files are written to a private sibling folder first and renamed
/// into place, so a reader never sees a half-written model.
pub fn embedded_tiny_folder() -> Result<PathBuf, SettingsError> {
    let base = std::env::var_os("INPAINT_CACHE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    materialise_embedded_tiny(&base)
}

pub(crate) fn embedded_tiny_digest() -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for (path, bytes) in EMBEDDED_TINY_FILES {
        hasher.update((path.len() as u64).to_le_bytes());
        hasher.update(path.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `folder` holds every embedded file with exactly the embedded bytes.
fn holds_embedded_tiny(folder: &Path) -> bool {
    EMBEDDED_TINY_FILES.iter().all(|(path, bytes)| {
        std::fs::read(folder.join(path)).is_ok_and(|on_disk| on_disk == *bytes)
    })
}

fn materialise_embedded_tiny(base: &Path) -> Result<PathBuf, SettingsError> {
    let failed = |what: &str, path: &Path, e: std::io::Error| {
        invalid(
            "engine.model",
            format!(
                "embedded-tiny: {what} {} failed: {e} (set INPAINT_CACHE_DIR or TMPDIR to a \
                 writable folder)",
                path.display()
            ),
        )
    };
    let folder = base.join(format!(
        "inpaint-worker-embedded-tiny-{}",
        embedded_tiny_digest()
    ));
    if holds_embedded_tiny(&folder) {
        return Ok(folder);
    }
    std::fs::create_dir_all(base).map_err(|e| failed("creating", base, e))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let staging = base.join(format!(
        ".inpaint-worker-embedded-tiny-{}-{nanos}",
        std::process::id()
    ));
    for (path, bytes) in EMBEDDED_TINY_FILES {
        let file = staging.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| failed("creating", parent, e))?;
        }
        std::fs::write(&file, bytes).map_err(|e| failed("writing", &file, e))?;
    }
    if folder.exists() {
        // Another process may have finished the same folder meanwhile; otherwise it is stale.
        if holds_embedded_tiny(&folder) {
            let _ = std::fs::remove_dir_all(&staging);
            return Ok(folder);
        }
        std::fs::remove_dir_all(&folder).map_err(|e| failed("removing stale", &folder, e))?;
    }
    match std::fs::rename(&staging, &folder) {
        Ok(()) => Ok(folder),
        // Lost a race with another worker renaming its identical copy into place.
        Err(_) if holds_embedded_tiny(&folder) => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(folder)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(failed("renaming into", &folder, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of the fixture folder is embedded with its bytes, and nothing else is: a file
    /// added to (or removed from) the tiny model breaks this test, not a container at run time.
    #[test]
    fn the_embedded_tiny_files_are_exactly_the_fixture_folder() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/parity/fixtures/models/tiny-sd-a");
        let mut on_disk = Vec::new();
        let mut pending = vec![root.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).expect("fixture folder") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    let relative = path.strip_prefix(&root).expect("inside");
                    on_disk.push((
                        relative.to_string_lossy().replace('\\', "/"),
                        std::fs::read(&path).expect("read"),
                    ));
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<(String, Vec<u8>)> = EMBEDDED_TINY_FILES
            .iter()
            .map(|(p, b)| ((*p).to_owned(), b.to_vec()))
            .collect();
        embedded.sort();
        let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
        assert_eq!(names(&embedded), names(&on_disk));
        assert!(
            embedded == on_disk,
            "an embedded file's bytes differ from the fixture's"
        );
    }

    #[test]
    fn embedded_tiny_is_written_once_reused_and_repaired() {
        let base = tempfile::tempdir().expect("tempdir");
        let folder = materialise_embedded_tiny(base.path()).expect("written");
        assert!(folder.starts_with(base.path()));
        assert!(holds_embedded_tiny(&folder));
        // Reused as is.
        let marker = folder.join("marker");
        std::fs::write(&marker, b"x").expect("marker");
        assert_eq!(
            materialise_embedded_tiny(base.path()).expect("again"),
            folder
        );
        assert!(marker.exists(), "an intact folder is reused, not rewritten");
        // Every damaged file is noticed and the folder replaced.
        for (path, _) in EMBEDDED_TINY_FILES {
            std::fs::write(folder.join(path), b"truncated").expect("damage");
            assert!(!holds_embedded_tiny(&folder), "{path}");
            assert_eq!(
                materialise_embedded_tiny(base.path()).expect("repaired"),
                folder
            );
            assert!(holds_embedded_tiny(&folder), "{path} repaired");
        }
        // No staging folders are left behind.
        let left: Vec<_> = std::fs::read_dir(base.path())
            .expect("base")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        // An unwritable base is an error naming the key, not a panic.
        let file = base.path().join("not-a-folder");
        std::fs::write(&file, b"").expect("file");
        match materialise_embedded_tiny(&file) {
            Err(SettingsError::Invalid { key, .. }) => assert_eq!(key, "engine.model"),
            other => panic!("expected an error, got {other:?}"),
        }
    }
}
