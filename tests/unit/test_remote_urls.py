"""Remote repository URLs: parsing, refusals, and the allow-list an API caller's URL
must fall inside (kvmops.backup.remote.check_remote_url)."""

from __future__ import annotations

import pytest

from kvmops.backup.remote import check_remote_url, is_remote_url, parse_remote_url
from kvmops.errors import PathRefusedError, ValidationError

ALLOWED = ("sftp://backup@10.0.0.5:2222/srv/kvm "
           "s3://kvm-backups/site-a?endpoint=http://127.0.0.1:9000")


def test_parse_and_normalise() -> None:
    url = parse_remote_url("sftp://backup@host.example:2222//srv/./kvm/?identity=/k")
    assert (url.user, url.host, url.port, url.path) == ("backup", "host.example", 2222,
                                                        "/srv/kvm")
    assert str(url) == "sftp://backup@host.example:2222/srv/kvm?identity=/k"
    s3 = parse_remote_url("s3://kvm-backups/a/b/?endpoint=http://127.0.0.1:9000")
    assert (s3.host, s3.path, s3.params["endpoint"]) == ("kvm-backups", "a/b",
                                                          "http://127.0.0.1:9000")
    assert str(parse_remote_url(str(s3))) == str(s3)
    assert is_remote_url("s3://x") and not is_remote_url("/srv/repo")


@pytest.mark.parametrize(("text", "fragment"), [
    ("sftp://u:s3cr3t@h/srv", "password"),
    ("sftp://u@h/srv/../etc", "'..'"),
    ("sftp://u@h/", "no directory"),
    ("sftp://u@h/srv?password=x", "unknown parameter 'password'"),
    ("sftp://u@h/srv?identity=relative", "absolute path"),
    ("s3://Bad_Bucket/x", "not a valid bucket"),
    ("s3://user@bucket/x", "not a user or port"),
    ("s3://bucket/x?endpoint=file:///etc", "is not http(s)"),
    ("s3://bucket/x?aws_secret_access_key=x", "unknown parameter"),
    ("http://bucket/x", "not a remote repository URL"),
])
def test_refused(text: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_remote_url(text)
    assert fragment in caught.value.message
    assert "s3cr3t" not in caught.value.message  # a password is never echoed


def test_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMOPS_REMOTE_REPOSITORIES", ALLOWED)
    ok = check_remote_url("sftp://backup@10.0.0.5:2222/srv/kvm/web1", trusted=False)
    assert ok == "sftp://backup@10.0.0.5:2222/srv/kvm/web1"
    assert check_remote_url("s3://kvm-backups/site-a/x?endpoint=http://127.0.0.1:9000",
                            trusted=False)
    for refused in (
            "sftp://backup@10.0.0.5:2222/srv/kvm-other",  # a sibling, not inside
            "sftp://backup@10.0.0.5:22/srv/kvm",  # another port
            "sftp://root@10.0.0.5:2222/srv/kvm",  # another user
            "sftp://backup@10.0.0.5:2222/srv/kvm?identity=/root/.ssh/id_rsa",  # a key
            "s3://kvm-backups/site-a?endpoint=http://10.0.0.9:9000",  # another server
            "s3://kvm-backups/site-ab?endpoint=http://127.0.0.1:9000",
            "s3://kvm-backups?endpoint=http://127.0.0.1:9000"):
        with pytest.raises(PathRefusedError, match="not in the allowed remote"):
            check_remote_url(refused, trusted=False)
        assert check_remote_url(refused, trusted=True)  # root at the CLI may
    monkeypatch.delenv("KVMOPS_REMOTE_REPOSITORIES")
    with pytest.raises(PathRefusedError):
        check_remote_url("sftp://backup@10.0.0.5:2222/srv/kvm", trusted=False)
