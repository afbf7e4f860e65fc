"""The one cache root: an explicit root, else $ICLSCALE_CACHE, else ~/.cache/iclscale; folders are created."""
from iclscale import cache


def test_cache_dir_root_env_and_default(tmp_path, monkeypatch):
  assert cache.cache_dir("omniglot", tmp_path / "a") == tmp_path / "a" / "omniglot"
  assert (tmp_path / "a" / "omniglot").is_dir()
  monkeypatch.setenv("ICLSCALE_CACHE", str(tmp_path / "env"))
  assert cache.cache_dir("jax") == tmp_path / "env" / "jax" and (tmp_path / "env" / "jax").is_dir()
  monkeypatch.delenv("ICLSCALE_CACHE")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert cache.cache_dir() == tmp_path / "home" / ".cache" / "iclscale"
