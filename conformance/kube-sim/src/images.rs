//! What images hold, for the simulator's host processes.
//!
//! The kubelet here runs container commands as host processes, so nothing of an image's
//! file system is there. A test says which files an image holds
//! ([`Simulator::image_file`]): "images whose reference contains X have file P, which is
//! host file H". A command in a container of such an image (its own command, or one
//! exec'd in it) that names P as a whole argv element runs H instead, through a link
//! named as P is, so the program sees the same `argv[0]` file name it would see in the
//! image (a multi-call binary such as jetbridge's mock resource, or busybox, picks its
//! behaviour from it). The element may stand anywhere: first, or after what the adapter
//! wraps commands in (`env K=V ... P args`, `sh -c SCRIPT sh DIR P args`), since in a
//! container each of those names the image's file too. A path inside a script string
//! (`sh -c 'exec P'`) is not seen.

use crate::Simulator;
use crate::state::{Flags, ImageFile};
use std::io::{Error, ErrorKind};
use std::path::{Path, PathBuf};

/// The directory of a simulator's image-file links, under its work root (namespaces
/// cannot start with a dot, so no pod directory meets it).
const LINKS_DIR: &str = ".image-files";

impl Simulator {
    /// Images whose reference contains `image_contains` hold the file `in_image_path`
    /// (absolute, e.g. `/opt/resource/check`), which is the host file `host_path`: a
    /// command of a container of such an image, or exec'd in one, that names
    /// `in_image_path` as an argv element runs `host_path` instead, with an `argv[0]`
    /// whose file name is `in_image_path`'s. Saying it again for the same image and path
    /// replaces the earlier file. Commands already running are not affected.
    ///
    /// Errors: `InvalidInput` for a path that is not absolute, has `..` or names no
    /// file; the link's own I/O errors.
    pub fn image_file(
        &self,
        image_contains: &str,
        in_image_path: &str,
        host_path: impl AsRef<Path>,
    ) -> std::io::Result<()> {
        let path = Path::new(in_image_path);
        if !path.is_absolute() || crate::process::has_dotdot(in_image_path) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("an image file's path must be absolute, without `..`: {in_image_path:?}"),
            ));
        }
        let Some(name) = path.file_name() else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("an image file's path must name a file: {in_image_path:?}"),
            ));
        };
        let target = std::path::absolute(host_path.as_ref())?;
        let mut flags = crate::state::lock(&self.shared.flags);
        // One directory per entry: two images may hold different files at one path.
        let slot = match flags
            .image_files
            .iter()
            .position(|f| f.image == image_contains && f.path == in_image_path)
        {
            Some(i) => i,
            None => flags.image_files.len(),
        };
        let link = self
            .shared
            .work_root
            .join(LINKS_DIR)
            .join(slot.to_string())
            .join(name);
        if let Some(dir) = link.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link)?;
        }
        std::os::unix::fs::symlink(&target, &link)?;
        let entry = ImageFile {
            image: image_contains.to_owned(),
            path: in_image_path.to_owned(),
            link,
        };
        match flags.image_files.get_mut(slot) {
            Some(e) => *e = entry,
            None => flags.image_files.push(entry),
        }
        Ok(())
    }
}

/// The built step-pod helper (`bins/jetbridge-helper`), for a test to give an image with
/// [`Simulator::image_file`]: `JETBRIDGE_HELPER_BIN` when set (CI sets the static build),
/// else the workspace's build beside the running test binary
/// (`target/<profile>/deps/<test>` -> `target/<profile>/jetbridge-helper`), which `cargo
/// test --workspace` makes before any test runs.
///
/// Panics, saying how to build it, when there is none: a test that needs the helper must
/// fail without it, never pass.
pub fn built_step_helper() -> PathBuf {
    if let Some(p) = std::env::var_os("JETBRIDGE_HELPER_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("jetbridge-helper"))
        .expect("the build directory of the test binary");
    assert!(
        path.is_file(),
        "the step-pod helper is not built at {}: run `cargo build -p jetbridge-helper` \
         (`cargo test --workspace` builds it) or set JETBRIDGE_HELPER_BIN",
        path.display()
    );
    path
}

/// `argv` as it runs on the host for a container of `image`: every element that is the
/// path of a file the image holds becomes that file's host link.
pub(crate) fn host_argv(flags: &Flags, image: &str, argv: Vec<String>) -> Vec<String> {
    if flags.image_files.is_empty() {
        return argv;
    }
    argv.into_iter()
        .map(|a| match link_of(flags, image, &a) {
            Some(link) => link.to_string_lossy().into_owned(),
            None => a,
        })
        .collect()
}

fn link_of<'a>(flags: &'a Flags, image: &str, path: &str) -> Option<&'a PathBuf> {
    flags
        .image_files
        .iter()
        .rev()
        .find(|f| f.path == path && image.contains(f.image.as_str()))
        .map(|f| &f.link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn whole_elements_of_a_matching_image_are_replaced() {
        let flags = Flags {
            image_files: vec![ImageFile {
                image: "jetbridge/jetbridge".into(),
                path: "/opt/resource/check".into(),
                link: PathBuf::from("/links/0/check"),
            }],
            ..Flags::default()
        };
        let wrapped = v(&[
            "env",
            "JETBRIDGE_EXEC_ID=1",
            "sh",
            "-c",
            "cd \"$1\" && shift && exec \"$@\"",
            "sh",
            "dir",
            "/opt/resource/check",
            "x",
        ]);
        let out = host_argv(&flags, "ghcr.io/jetbridge/jetbridge:1", wrapped.clone());
        assert_eq!(out[7], "/links/0/check");
        assert_eq!(out[..7], wrapped[..7]);
        assert_eq!(out[8], "x");
        // Another image has no such file; a script string is not a path.
        assert_eq!(host_argv(&flags, "busybox:1.36", wrapped.clone()), wrapped);
        let script = v(&["sh", "-c", "exec /opt/resource/check"]);
        assert_eq!(
            host_argv(&flags, "ghcr.io/jetbridge/jetbridge:1", script.clone()),
            script
        );
    }

    #[tokio::test]
    async fn a_file_runs_from_a_link_named_as_in_the_image() {
        let sim = Simulator::start(crate::SimConfig::default())
            .await
            .expect("simulator");
        let host = sim.work_root().join("host-check");
        std::fs::write(&host, "one").expect("write");
        sim.image_file("mock:1", "/opt/resource/check", &host)
            .expect("image file");
        let argv = |image: &str| {
            host_argv(
                &crate::state::lock(&sim.shared.flags),
                image,
                v(&["env", "/opt/resource/check"]),
            )
        };
        let first = PathBuf::from(&argv("registry/mock:1")[1]);
        assert_eq!(first.file_name().and_then(|n| n.to_str()), Some("check"));
        assert_eq!(std::fs::read_to_string(&first).expect("read"), "one");
        // Said again, the same image's file is replaced; another image keeps its own.
        let other = sim.work_root().join("other-check");
        std::fs::write(&other, "two").expect("write");
        sim.image_file("mock:1", "/opt/resource/check", &other)
            .expect("replaced");
        sim.image_file("mock:2", "/opt/resource/check", &host)
            .expect("second image");
        let read = |image: &str| std::fs::read_to_string(&argv(image)[1]).expect("read");
        assert_eq!(read("mock:1"), "two");
        assert_eq!(read("mock:2"), "one");
        assert_eq!(argv("busybox")[1], "/opt/resource/check");
        for bad in ["opt/resource/check", "/opt/../etc/passwd", "/"] {
            let e = sim.image_file("mock:1", bad, &host).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad}");
        }
        sim.shutdown().await;
    }
}
