//! `cargo xtask image`: the container image without a registry. The base is Debian's own
//! packages (`debootstrap --variant=minbase`, slimmed as Debian's `-slim` images are), the
//! binary is `cargo xtask build`'s, and the result is one tarball that holds both an OCI image
//! layout (`index.json`, what `ctr images import` and Docker 25+ read) and Docker's
//! `manifest.json` (what `docker load` of older engines, 20.10 among them, reads).
//!
//! The Dockerfile stays for people with a registry; its runtime stage is read here (base suite,
//! where the binary goes, entrypoint, command, user), so the two cannot describe different
//! images.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::{json, Value};

use rst_lab::cmd;

use crate::build;

/// The name the tarball gives the image: what `deploy/daemonset.yaml` runs.
pub const IMAGE_REF: &str = "rstwatch:latest";

/// Bump to rebuild a cached base made by an older recipe.
const BASE_RECIPE: u32 = 1;

/// What a base is slimmed of, as Debian's `-slim` images are (docs, manuals, translations) plus
/// what only the build host needed (package lists and downloaded .debs, logs, device nodes:
/// the runtime makes /dev).
const SLIM: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/cache/debconf",
    "var/log",
    "dev",
    "run",
    "tmp",
    "proc",
    "sys",
];

/// The runtime stage of the Dockerfile: what the image is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeStage {
    /// Debian suite of `FROM debian:<suite>-slim`.
    pub suite: String,
    /// Where `COPY --from=build` puts the binary.
    pub binary: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `USER`, or root.
    pub user: Option<String>,
}

/// Reads the last stage of `dockerfile` (text): its base must be a Debian slim image, its one
/// COPY the binary from the build stage; ENTRYPOINT and CMD in exec form.
pub fn runtime_stage(dockerfile: &str) -> Result<RuntimeStage> {
    let stage = dockerfile
        .rsplit_once("\nFROM ")
        .map(|(_, last)| format!("FROM {last}"))
        .context("the Dockerfile has no second FROM (the runtime stage)")?;
    let mut suite = None;
    let mut binary = None;
    let mut entrypoint = None;
    let mut command = None;
    let mut user = None;
    for line in stage.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (instruction, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        match instruction {
            "FROM" => {
                let tag = rest
                    .strip_prefix("debian:")
                    .and_then(|t| t.strip_suffix("-slim"))
                    .with_context(|| format!("the runtime base {rest:?} is not debian:<suite>-slim"))?;
                suite = Some(tag.to_owned());
            }
            "COPY" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                ensure!(
                    words.len() == 3 && words[0] == "--from=build",
                    "the runtime stage copies something other than the binary: {line}"
                );
                binary = Some(words[2].to_owned());
            }
            "ENTRYPOINT" => entrypoint = Some(exec_form(rest)?),
            "CMD" => command = Some(exec_form(rest)?),
            "USER" => user = Some(rest.to_owned()),
            other => bail!("`cargo xtask image` does not know the runtime stage's {other}: teach it ({line})"),
        }
    }
    Ok(RuntimeStage {
        suite: suite.context("no FROM")?,
        binary: binary.context("no COPY of the binary")?,
        entrypoint: entrypoint.context("no ENTRYPOINT")?,
        cmd: command.unwrap_or_default(),
        user,
    })
}

fn exec_form(text: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).with_context(|| format!("{text} is not in exec (JSON) form"))
}

/// Where the image and its cache live.
pub fn image_dir() -> PathBuf {
    cmd::workspace_root().join("target/image")
}

/// Builds the binary and the image; the tarball's path.
pub fn run() -> Result<PathBuf> {
    let binary = build::run()?;
    let dockerfile = std::fs::read_to_string(cmd::workspace_root().join("Dockerfile")).context("reading Dockerfile")?;
    let stage = runtime_stage(&dockerfile)?;
    let dir = image_dir();
    std::fs::create_dir_all(&dir)?;
    let base = base_layer(&dir, &stage.suite)?;
    let app = app_layer(&dir, &binary, &stage.binary)?;
    let out = rst_lab::paths::image_tarball();
    write_archive(&dir, &[base, app], &stage, &out)?;
    println!("xtask: image {IMAGE_REF} (Debian {} slim + {}) in {}", stage.suite, stage.binary, out.display());
    println!("xtask: load it with `docker load -i {0}` or `ctr images import {0}`", out.display());
    Ok(out)
}

/// The Debian mirror apt uses here (`RSTWATCH_DEBIAN_MIRROR` overrides): the first `deb` source
/// of `suite` with `main`, from deb822 `.sources` files or the one-line format.
fn debian_mirror(suite: &str) -> Result<String> {
    if let Some(mirror) = std::env::var_os("RSTWATCH_DEBIAN_MIRROR") {
        return mirror.into_string().map_err(|_| anyhow::anyhow!("RSTWATCH_DEBIAN_MIRROR is not UTF-8"));
    }
    let mut texts = Vec::new();
    for dir in ["/etc/apt/sources.list.d"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for path in paths {
                if path.extension().is_some_and(|e| e == "sources" || e == "list") {
                    texts.push((path.extension().is_some_and(|e| e == "sources"), read_or_empty(&path)));
                }
            }
        }
    }
    texts.push((false, read_or_empty(Path::new("/etc/apt/sources.list"))));
    for (deb822, text) in &texts {
        let found = if *deb822 { mirror_deb822(text, suite) } else { mirror_one_line(text, suite) };
        if let Some(uri) = found {
            return Ok(uri);
        }
    }
    bail!("no apt source of Debian {suite} main here: set RSTWATCH_DEBIAN_MIRROR to a Debian mirror's URL")
}

fn read_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn mirror_deb822(text: &str, suite: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')).map(str::trim))
        };
        let debs = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let has_suite = field("Suites").is_some_and(|s| s.split_whitespace().any(|s| s == suite));
        let main = field("Components").is_some_and(|c| c.split_whitespace().any(|c| c == "main"));
        let enabled = field("Enabled").is_none_or(|e| e != "no");
        (debs && has_suite && main && enabled).then(|| field("URIs")?.split_whitespace().next().map(str::to_owned))?
    })
}

fn mirror_one_line(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().filter(|w| !w.starts_with('[') || !w.ends_with(']')).collect();
        match words.as_slice() {
            ["deb", uri, s, components @ ..] if *s == suite && components.contains(&"main") => Some((*uri).to_owned()),
            _ => None,
        }
    })
}

/// The base layer, `target/image/base-<suite>.tar`: made once by debootstrap, then reused
/// (a stamp names the recipe and mirror it was made with).
fn base_layer(dir: &Path, suite: &str) -> Result<PathBuf> {
    let tar = dir.join(format!("base-{suite}.tar"));
    let stamp = dir.join(format!("base-{suite}.stamp"));
    let mirror = debian_mirror(suite)?;
    let want = format!("recipe {BASE_RECIPE}\nsuite {suite}\nmirror {mirror}\n");
    if tar.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        println!("xtask: reusing the Debian {suite} base {}", tar.display());
        return Ok(tar);
    }
    ensure!(
        rst_lab::skip::find_tool("debootstrap").is_some(),
        "debootstrap is not installed (`cargo xtask setup` installs it)"
    );
    let rootfs = dir.join(format!("base-{suite}.rootfs"));
    remove_dir(&rootfs)?;
    println!("xtask: debootstrap --variant=minbase {suite} from {mirror} (once; cached in {})", tar.display());
    let mut debootstrap = cmd::command("debootstrap", ["--variant=minbase", "--components=main", "--arch=amd64"]);
    debootstrap.arg(suite).arg(&rootfs).arg(&mirror).stdout(std::process::Stdio::null());
    cmd::run(&mut debootstrap).context("debootstrap of the image's base")?;
    for path in SLIM {
        let path = rootfs.join(path);
        remove_dir(&path)?;
        std::fs::create_dir_all(&path)?;
    }
    // Made per container by the runtime; one baked in would be every container's.
    let _ = std::fs::remove_file(rootfs.join("etc/machine-id"));
    std::fs::set_permissions(rootfs.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777))?;
    let partial = dir.join(format!("base-{suite}.tar.partial"));
    layer_tar(&rootfs, &["."], &partial)?;
    std::fs::rename(&partial, &tar)?;
    std::fs::write(&stamp, want)?;
    remove_dir(&rootfs)?;
    Ok(tar)
}

fn remove_dir(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// A layer tarball of `paths` under `root`: numeric owners, sorted, one mtime, so the same
/// files give the same digest.
fn layer_tar(root: &Path, paths: &[&str], out: &Path) -> Result<()> {
    let mut tar = cmd::command(
        "tar",
        ["--numeric-owner", "--sort=name", "--mtime=@0", "--xattrs", "--xattrs-include=security.capability"],
    );
    tar.arg("-C").arg(root).arg("-cf").arg(out).args(paths);
    cmd::run(&mut tar).with_context(|| format!("tar of {}", root.display()))
}

/// The layer with the binary at `dest` (an absolute path), root-owned, 0755.
fn app_layer(dir: &Path, binary: &Path, dest: &str) -> Result<PathBuf> {
    let dest = dest.strip_prefix('/').with_context(|| format!("{dest} is not absolute"))?;
    let staging = dir.join("app");
    remove_dir(&staging)?;
    let target = staging.join(dest);
    std::fs::create_dir_all(target.parent().context("the binary's path has no directory")?)?;
    std::fs::copy(binary, &target).with_context(|| format!("copying {}", binary.display()))?;
    std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let top = dest.split('/').next().context("empty destination")?;
    let out = dir.join("app.tar");
    let mut tar = cmd::command("tar", ["--numeric-owner", "--owner=0", "--group=0", "--sort=name", "--mtime=@0"]);
    tar.arg("-C").arg(&staging).arg("-cf").arg(&out).arg(top);
    cmd::run(&mut tar).context("tar of the binary's layer")?;
    Ok(out)
}

/// `sha256sum` of a file, hex.
fn sha256(path: &Path) -> Result<String> {
    let out = cmd::output(Command::new("sha256sum").arg(path))?;
    let hex = out.split_whitespace().next().unwrap_or_default().to_owned();
    ensure!(hex.len() == 64, "sha256sum {}: {out}", path.display());
    Ok(hex)
}

/// Puts `path` into the layout's blob store; its digest and size.
fn add_blob(blobs: &Path, path: &Path) -> Result<(String, u64)> {
    let hex = sha256(path)?;
    let size = std::fs::metadata(path)?.len();
    let dest = blobs.join(&hex);
    // Hard links: the layers are large and the cache keeps its own copy.
    let _ = std::fs::remove_file(&dest);
    if std::fs::hard_link(path, &dest).is_err() {
        std::fs::copy(path, &dest)?;
    }
    Ok((format!("sha256:{hex}"), size))
}

fn add_json_blob(blobs: &Path, value: &Value) -> Result<(String, u64)> {
    let scratch = blobs.join("scratch.json");
    std::fs::write(&scratch, serde_json::to_vec(value)?)?;
    let blob = add_blob(blobs, &scratch)?;
    std::fs::remove_file(&scratch)?;
    Ok(blob)
}

/// When the image was made: the commit's time, so a rebuild of one commit names one date.
fn created() -> String {
    let mut git = cmd::command("git", ["log", "-1", "--format=%cI"]);
    git.current_dir(cmd::workspace_root());
    cmd::output(&mut git).map(|t| t.trim().to_owned()).unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// Writes the OCI layout plus Docker's manifest.json around `layers` and tars it to `out`.
fn write_archive(dir: &Path, layers: &[PathBuf], stage: &RuntimeStage, out: &Path) -> Result<()> {
    let layout = dir.join("layout");
    remove_dir(&layout)?;
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let mut descriptors = Vec::new();
    let mut layer_paths = Vec::new();
    for layer in layers {
        let (digest, size) = add_blob(&blobs, layer)?;
        layer_paths.push(format!("blobs/sha256/{}", &digest["sha256:".len()..]));
        descriptors
            .push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size}));
    }
    let created = created();
    let mut config = json!({
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Entrypoint": stage.entrypoint,
        "Cmd": stage.cmd,
        "Labels": {
            "org.opencontainers.image.title": "rstwatch",
            "org.opencontainers.image.base.name": format!("debian:{}-slim (debootstrap --variant=minbase)", stage.suite),
        },
    });
    if let Some(user) = &stage.user {
        config["User"] = json!(user);
    }
    let diff_ids: Vec<String> =
        descriptors.iter().map(|d| d["digest"].as_str().unwrap_or_default().to_owned()).collect();
    let image_config = json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": created, "created_by": format!("debootstrap --variant=minbase {} (slimmed)", stage.suite)},
            {"created": created, "created_by": format!("cargo xtask image: target/release/rstwatch -> {}", stage.binary)},
        ],
    });
    let (config_digest, config_size) = add_json_blob(&blobs, &image_config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": descriptors,
    });
    let (manifest_digest, manifest_size) = add_json_blob(&blobs, &manifest)?;
    let (_, tag) = IMAGE_REF.split_once(':').context("IMAGE_REF has no tag")?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {
                // containerd's name for it (kubelet normalizes `rstwatch:latest` the same way).
                "io.containerd.image.name": format!("docker.io/library/{IMAGE_REF}"),
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let docker = json!([{
        "Config": format!("blobs/sha256/{}", &config_digest["sha256:".len()..]),
        "RepoTags": [IMAGE_REF],
        "Layers": layer_paths,
    }]);
    std::fs::write(layout.join("manifest.json"), serde_json::to_vec(&docker)?)?;
    let partial = out.with_extension("tar.partial");
    let mut tar = cmd::command("tar", ["--numeric-owner", "--owner=0", "--group=0", "--sort=name", "--mtime=@0"]);
    tar.arg("-C").arg(&layout).arg("--hard-dereference").arg("-cf").arg(&partial).args([
        "oci-layout",
        "index.json",
        "manifest.json",
        "blobs",
    ]);
    cmd::run(&mut tar).context("tar of the image")?;
    std::fs::rename(&partial, out)?;
    remove_dir(&layout)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_stage_is_read_from_the_dockerfile() {
        let text = std::fs::read_to_string(cmd::workspace_root().join("Dockerfile")).expect("Dockerfile");
        let stage = runtime_stage(&text).expect("runtime stage");
        assert_eq!(stage.suite, "bookworm");
        assert_eq!(stage.binary, "/usr/local/bin/rstwatch");
        assert_eq!(stage.entrypoint, ["/usr/local/bin/rstwatch"]);
        let odd = text.replace("FROM debian:bookworm-slim", "FROM alpine:3");
        assert!(runtime_stage(&odd).unwrap_err().to_string().contains("not debian:<suite>-slim"));
        let more = text.replace("ENTRYPOINT", "RUN true\nENTRYPOINT");
        assert!(runtime_stage(&more).unwrap_err().to_string().contains("does not know the runtime stage's RUN"));
    }

    #[test]
    fn the_mirror_is_read_from_either_apt_format() {
        let deb822 =
            "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
            Types: deb\nURIs: http://m.example/debian-security\nSuites: bookworm-security\nComponents: main\n";
        assert_eq!(mirror_deb822(deb822, "bookworm").as_deref(), Some("http://m.example/debian"));
        assert_eq!(mirror_deb822(deb822, "trixie"), None);
        let one_line = "deb [arch=amd64] http://o.example/debian bookworm main contrib\n";
        assert_eq!(mirror_one_line(one_line, "bookworm").as_deref(), Some("http://o.example/debian"));
    }
}
