import hashlib

from anomaly_diff.utils.provenance import content_hash, loaded_file


def test_file_hash_is_its_sha256(tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"weights" * 1000)
    assert content_hash(tmp_path / "last.ckpt") == hashlib.sha256(b"weights" * 1000).hexdigest()


def test_folder_hash_covers_names_and_contents_in_name_order(tmp_path):
    (tmp_path / "b.bin").write_bytes(b"2")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.json").write_bytes(b"1")
    expected = hashlib.sha256(b"b.bin\x00" + b"2" + b"sub/a.json\x00" + b"1").hexdigest()
    assert content_hash(tmp_path) == expected
    (tmp_path / "sub" / "a.json").write_bytes(b"3")
    assert content_hash(tmp_path) != expected


def test_record_resolves_links_and_says_which_file(tmp_path, caplog):
    run = tmp_path / "version_1"
    run.mkdir()
    (run / "last.ckpt").write_bytes(b"weights")
    (tmp_path / "latest").symlink_to("version_1")
    with caplog.at_level("INFO"):
        record = loaded_file("base_checkpoint", tmp_path / "latest" / "last.ckpt", "DRDC")
    assert record == {"path": str(tmp_path / "latest" / "last.ckpt"), "resolved": str(run / "last.ckpt"),
                      "sha256": hashlib.sha256(b"weights").hexdigest()}
    assert f"= {run / 'last.ckpt'}" in caplog.text


def test_a_hub_id_is_recorded_without_hash():
    assert loaded_file("autoencoder", "stabilityai/sd-vae-ft-ema", "DeCoDiff") == {
        "path": "stabilityai/sd-vae-ft-ema", "resolved": None, "sha256": None}
