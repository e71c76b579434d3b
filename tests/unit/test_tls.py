"""Unit tests for _utils/mysqlrepl_tls.py (cryptography-only CA / CSR / certificate helpers)."""

import datetime
import os
import pathlib
import stat
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from salt.exceptions import CommandExecutionError

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "_utils"))

import mysqlrepl_tls as tls  # noqa: E402  pylint: disable=wrong-import-position

SUBJECT = {"C": "US", "ST": "Utah", "L": "Salt Lake City", "O": "Zürich DB", "OU": "ops"}


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _openssl(*args):
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


def _make_ca(root, name="mysql", **kwargs):
    """Create a CA under ``root``; return (crt path, key path)."""
    kwargs.setdefault("CN", f"{name}-ca.example")
    changed, _ = tls.create_ca(name, cacert_path=str(root), **kwargs)
    assert changed
    stem = root / name / f"{name}_ca_cert"
    return stem.with_suffix(".crt"), stem.with_suffix(".key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server key and a certificate for it, shared by the read-only tests."""
    root = tmp_path_factory.mktemp("pki")
    ca_crt, ca_key = _make_ca(root, emailAddress="ca@example.com")
    key = root / "db1.key"
    assert tls.create_private_key(str(key))
    csr = tls.build_csr(
        str(key),
        "db1",
        subject=dict(SUBJECT, emailAddress="dba@example.com"),
        san=["db1.example", "10.0.0.11"],
    )
    cert = tls.sign_csr(csr, str(ca_crt), str(ca_key), days=30)
    cert_file = root / "db1.crt"
    cert_file.write_text(cert)
    return {
        "ca_crt": ca_crt,
        "ca_key": ca_key,
        "key": key,
        "csr": csr,
        "cert": cert,
        "cert_file": cert_file,
    }


# --------------------------------------------------------------------------- CA


def test_create_ca_twice_is_idempotent(tmp_path):
    changed, message = tls.create_ca("mysql", CN="ca.example", cacert_path=str(tmp_path))
    crt = tmp_path / "mysql" / "mysql_ca_cert.crt"
    key = tmp_path / "mysql" / "mysql_ca_cert.key"
    assert changed
    assert message == f'Created Private Key: "{key}" Created CA "mysql": "{crt}"'
    before = (crt.read_bytes(), key.read_bytes())

    changed, message = tls.create_ca("mysql", CN="ca.example", cacert_path=str(tmp_path))
    assert not changed
    assert message == 'Certificate "mysql" already exists'
    assert (crt.read_bytes(), key.read_bytes()) == before

    assert _mode(key) == 0o600
    assert _mode(crt) == 0o644
    assert _mode(tmp_path / "mysql") == 0o700
    assert not [p for p in (tmp_path / "mysql").iterdir() if p.name.endswith(".tmp")]


def test_create_ca_extensions(pki):
    ca = x509.load_pem_x509_certificate(pki["ca_crt"].read_bytes())
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert basic.critical and basic.value.ca
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ca.subject == ca.issuer


def test_create_ca_replace_keeps_key_and_issued_certs_valid(tmp_path):
    ca_crt, ca_key = _make_ca(tmp_path)
    key_before, crt_before = ca_key.read_bytes(), ca_crt.read_bytes()
    changed, message = tls.create_ca(
        "mysql", CN="mysql-ca.example", cacert_path=str(tmp_path), replace=True
    )
    assert changed and message.startswith("Reused Private Key")
    assert ca_key.read_bytes() == key_before
    assert ca_crt.read_bytes() != crt_before


def test_create_ca_custom_filename(tmp_path):
    changed, _ = tls.create_ca("x", ca_filename="root", cacert_path=str(tmp_path))
    assert changed
    assert (tmp_path / "x" / "root.crt").is_file()
    assert (tmp_path / "x" / "root.key").is_file()


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({"bits": 1024}, "bits must be at least 2048"),
        ({"days": 0}, "days must be at least 1"),
        ({"days": "soon"}, "days must be an integer"),
        ({"digest": "md5"}, 'Unsupported digest "md5"'),
        ({"C": "USA"}, "Invalid subject"),
        ({"fixmode": True}, "cannot fix"),
    ],
)
def test_create_ca_rejects_bad_input(tmp_path, kwargs, text):
    with pytest.raises(CommandExecutionError, match=text):
        tls.create_ca("mysql", cacert_path=str(tmp_path), **kwargs)
    assert not (tmp_path / "mysql" / "mysql_ca_cert.key").exists()


def test_create_ca_cert_without_key_is_an_error(tmp_path):
    ca_crt, ca_key = _make_ca(tmp_path)
    ca_key.unlink()
    with pytest.raises(CommandExecutionError, match="is missing"):
        tls.create_ca("mysql", cacert_path=str(tmp_path))


# --------------------------------------------------------------------------- keys


def test_create_private_key_creates_and_fixes_mode(tmp_path):
    key = tmp_path / "server.key"
    assert tls.key_status(str(key)) == {
        "exists": False,
        "mode_ok": False,
        "owner_ok": False,
        "mode": None,
    }
    assert tls.create_private_key(str(key))
    assert _mode(key) == 0o600
    content = key.read_bytes()
    assert content.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert not tls.create_private_key(str(key))

    os.chmod(key, 0o644)
    assert tls.key_status(str(key)) == {
        "exists": True,
        "mode_ok": False,
        "owner_ok": True,
        "mode": "0644",
    }
    assert _mode(key) == 0o644  # key_status changes nothing
    assert tls.create_private_key(str(key))
    assert _mode(key) == 0o600
    assert key.read_bytes() == content


def test_key_owner_check_and_fix(tmp_path):
    key = tmp_path / "server.key"
    uid, gid = os.getuid(), os.getgid()
    assert tls.create_private_key(str(key), uid=uid, gid=gid)
    assert tls.key_status(str(key), uid=uid, gid=gid)["owner_ok"]
    assert not tls.create_private_key(str(key), uid=uid, gid=gid)
    other = uid + 4242
    assert not tls.key_status(str(key), uid=other)["owner_ok"]
    if uid != 0:
        pytest.skip("changing the owner needs root")
    assert tls.create_private_key(str(key), uid=other, gid=other)
    st = os.stat(key)
    assert (st.st_uid, st.st_gid) == (other, other)
    assert tls.key_status(str(key), uid=other, gid=other)["owner_ok"]


def test_create_private_key_rejects_small_keys(tmp_path):
    with pytest.raises(CommandExecutionError, match="at least 2048"):
        tls.create_private_key(str(tmp_path / "k.key"), bits=1024)


# --------------------------------------------------------------------------- CSRs


def test_csr_round_trip(pki):
    info = tls.csr_info(pki["csr"])
    assert info["CN"] == "db1"
    assert info["subject"] == dict(SUBJECT, CN="db1", emailAddress="dba@example.com")
    assert info["subject_str"] == (
        "/C=US/ST=Utah/L=Salt Lake City/O=Z\\xC3\\xBCrich DB/OU=ops/CN=db1"
        "/emailAddress=dba@example.com"
    )
    assert info["san"] == ["10.0.0.11", "db1.example"]
    assert info["public_key_sha256"] == tls.key_public_sha256(str(pki["key"]))

    csr = x509.load_pem_x509_csr(pki["csr"].encode())
    names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["db1.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.11"]


def test_build_csr_san_prefixes_and_ipv6(pki):
    csr = tls.build_csr(
        str(pki["key"]), "db2", san=["IP:2001:db8::1", "dns:db2.example", "db2.example", "::1"]
    )
    assert tls.csr_info(csr)["san"] == ["2001:db8::1", "::1", "db2.example"]


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({"san": ["bad name"]}, "Invalid DNS name"),
        ({"san": ["IP:db.example"]}, "Invalid IP address"),
        ({"subject": {"CN": "x"}}, "Unknown subject fields: CN"),
        ({"subject": {"X": "y"}}, "Unknown subject fields: X"),
        ({"digest": "sha1"}, "Unsupported digest"),
    ],
)
def test_build_csr_rejects_bad_input(pki, kwargs, text):
    with pytest.raises(CommandExecutionError, match=text):
        tls.build_csr(str(pki["key"]), "db1", **kwargs)


def test_invalid_csr_raises(pki):
    with pytest.raises(CommandExecutionError, match="Invalid PEM"):
        tls.csr_info("not a csr")

    der = bytearray(
        x509.load_pem_x509_csr(pki["csr"].encode()).public_bytes(serialization.Encoding.DER)
    )
    der[-1] ^= 0xFF  # last byte of the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CommandExecutionError, match="signature is invalid"):
        tls.csr_info(tampered)
    with pytest.raises(CommandExecutionError, match="signature is invalid"):
        tls.sign_csr(tampered, str(pki["ca_crt"]), str(pki["ca_key"]))


def test_unreadable_key_raises(tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text("garbage")
    with pytest.raises(CommandExecutionError, match="not an unencrypted PEM private key"):
        tls.key_public_sha256(str(bad))
    with pytest.raises(CommandExecutionError, match="Cannot read private key"):
        tls.key_public_sha256(str(tmp_path / "missing.key"))


# --------------------------------------------------------------------------- certificates


def test_signed_cert_contents(pki):
    info = tls.cert_info(pki["cert"])
    assert info["eku"] == ["serverAuth", "clientAuth"]
    assert info["san"] == ["10.0.0.11", "db1.example"]
    assert info["subject"]["CN"] == "db1"
    assert info["subject_str"] == tls.csr_info(pki["csr"])["subject_str"]
    assert info["issuer_str"] == (
        "/C=US/ST=Utah/L=Salt Lake City/O=SaltStack/CN=mysql-ca.example"
        "/emailAddress=ca@example.com"
    )
    assert info["public_key_sha256"] == tls.key_public_sha256(str(pki["key"]))
    assert 29.99 < info["days_remaining"] <= 30
    not_before = datetime.datetime.fromisoformat(info["not_before"])
    assert not_before.utcoffset() == datetime.timedelta(0)
    assert datetime.datetime.now(datetime.timezone.utc) - not_before >= tls.BACKDATE

    cert = x509.load_pem_x509_certificate(pki["cert"].encode())
    ca = x509.load_pem_x509_certificate(pki["ca_crt"].read_bytes())
    assert int(info["serial"], 16) == cert.serial_number
    assert 0 < cert.serial_number < 2**159
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert basic.critical and not basic.value.ca
    assert usage.critical and usage.value.digital_signature and usage.value.key_encipherment
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)


@pytest.mark.parametrize(
    "usage, eku",
    [
        ("server", ["serverAuth"]),
        ("client", ["clientAuth"]),
        ("server_client", ["serverAuth", "clientAuth"]),
    ],
)
def test_sign_csr_usage(pki, usage, eku):
    cert = tls.sign_csr(pki["csr"], str(pki["ca_crt"]), str(pki["ca_key"]), usage=usage)
    assert tls.cert_info(cert)["eku"] == eku


def test_sign_csr_rejects_unknown_usage(pki):
    with pytest.raises(CommandExecutionError, match="Unknown usage"):
        tls.sign_csr(pki["csr"], str(pki["ca_crt"]), str(pki["ca_key"]), usage="email")


def test_sign_csr_rejects_foreign_ca_key(pki):
    with pytest.raises(CommandExecutionError, match="does not belong"):
        tls.sign_csr(pki["csr"], str(pki["ca_crt"]), str(pki["key"]))


def test_not_after_clipped_to_ca(tmp_path, pki):
    ca_crt, ca_key = _make_ca(tmp_path, days=2)
    cert = tls.sign_csr(pki["csr"], str(ca_crt), str(ca_key), days=365)
    ca_info = tls.cert_info(ca_crt.read_text())
    assert tls.cert_info(cert)["not_after"] == ca_info["not_after"]


def test_openssl_verify(tmp_path, pki):
    result = _openssl("verify", "-CAfile", str(pki["ca_crt"]), str(pki["cert_file"]))
    assert result.returncode == 0, result.stderr
    assert tls.cert_signed_by(pki["cert"], pki["ca_crt"].read_text())

    # a CA with the very same subject but its own key
    other_crt, other_key = _make_ca(
        tmp_path, name="other", CN="mysql-ca.example", emailAddress="ca@example.com"
    )
    assert tls.cert_info(other_crt.read_text())["subject_str"] == tls.cert_info(
        pki["ca_crt"].read_text()
    )["subject_str"]
    foreign = tmp_path / "foreign.crt"
    foreign.write_text(tls.sign_csr(pki["csr"], str(other_crt), str(other_key)))
    result = _openssl("verify", "-CAfile", str(pki["ca_crt"]), str(foreign))
    assert result.returncode != 0
    assert not tls.cert_signed_by(foreign.read_text(), pki["ca_crt"].read_text())
    assert tls.cert_signed_by(foreign.read_text(), other_crt.read_text())


def test_cert_matches_key(tmp_path, pki):
    assert tls.cert_matches_key(pki["cert"], str(pki["key"]))
    foreign = tmp_path / "foreign.key"
    tls.create_private_key(str(foreign))
    assert not tls.cert_matches_key(pki["cert"], str(foreign))


def test_subject_str_matches_openssl_compat(pki):
    for name, path in (("subject", pki["cert_file"]), ("issuer", pki["ca_crt"])):
        result = _openssl("x509", "-in", str(path), "-noout", f"-{name}", "-nameopt", "compat")
        assert result.returncode == 0, result.stderr
        expected = result.stdout.strip().removeprefix(f"{name}=")
        assert tls.cert_info(path.read_text())[f"{name}_str"] == expected
    assert "\\xC3\\xBC" in tls.cert_info(pki["cert"])["subject_str"]


# --------------------------------------------------------------------------- salt tls shape


def test_create_csr_and_signed_cert_files(tmp_path):
    _make_ca(tmp_path)
    certs = tmp_path / "mysql" / "certs"
    changed, message = tls.create_csr(
        "mysql",
        CN="db1",
        O="Example",
        subjectAltName="DNS:db1.example, IP:10.0.0.11",
        cacert_path=str(tmp_path),
    )
    assert changed
    assert message == (
        f'Created Private Key: "{certs}/db1.key" Created CSR for "db1": "{certs}/db1.csr"'
    )
    assert _mode(certs / "db1.key") == 0o600
    assert tls.csr_info((certs / "db1.csr").read_text())["san"] == ["10.0.0.11", "db1.example"]

    changed, message = tls.create_csr("mysql", CN="db1", cacert_path=str(tmp_path))
    assert not changed
    assert message == f'Certificate Request "{certs}/db1.csr" already exists'

    changed, message = tls.create_ca_signed_cert("mysql", "db1", cacert_path=str(tmp_path))
    assert changed
    assert message == f'Created Certificate for "db1": "{certs}/db1.crt"'
    cert = (certs / "db1.crt").read_text()
    assert tls.cert_info(cert)["eku"] == ["serverAuth", "clientAuth"]
    assert tls.cert_matches_key(cert, str(certs / "db1.key"))

    changed, message = tls.create_ca_signed_cert("mysql", "db1", cacert_path=str(tmp_path))
    assert not changed
    assert message == 'Certificate "db1" already exists'
    assert (certs / "db1.crt").read_text() == cert

    # a different cert_type no longer matches the existing certificate
    changed, _ = tls.create_ca_signed_cert(
        "mysql", "db1", cacert_path=str(tmp_path), cert_type="client"
    )
    assert changed
    assert tls.cert_info((certs / "db1.crt").read_text())["eku"] == ["clientAuth"]


def test_create_csr_replace_makes_new_key_and_cert_follows(tmp_path):
    _make_ca(tmp_path)
    out = tmp_path / "out"
    kwargs = {"cacert_path": str(tmp_path), "csr_path": str(out), "csr_filename": "r1"}
    assert tls.create_csr("mysql", CN="db1", subjectAltName=["db1.example"], **kwargs)[0]
    assert _mode(out) == 0o700
    signed = {"cacert_path": str(tmp_path), "cert_path": str(out), "cert_filename": "r1"}
    assert tls.create_ca_signed_cert("mysql", "db1", **signed)[0]
    old_key = (out / "r1.key").read_bytes()

    changed, message = tls.create_csr("mysql", CN="db1", replace=True, **kwargs)
    assert changed and message.startswith("Created Private Key")
    assert (out / "r1.key").read_bytes() != old_key
    # the old certificate no longer matches the CSR's key, so it is re-issued
    changed, _ = tls.create_ca_signed_cert("mysql", "db1", **signed)
    assert changed
    assert tls.cert_matches_key((out / "r1.crt").read_text(), str(out / "r1.key"))


def test_create_csr_reuses_existing_key(tmp_path):
    certs = tmp_path / "mysql" / "certs"
    certs.mkdir(parents=True)
    tls.create_private_key(str(certs / "db1.key"))
    os.chmod(certs / "db1.key", 0o640)
    digest = tls.key_public_sha256(str(certs / "db1.key"))
    changed, message = tls.create_csr("mysql", CN="db1", cacert_path=str(tmp_path))
    assert changed and message.startswith("Created CSR")
    assert tls.csr_info((certs / "db1.csr").read_text())["public_key_sha256"] == digest
    assert _mode(certs / "db1.key") == 0o600


def test_create_ca_signed_cert_errors(tmp_path):
    with pytest.raises(CommandExecutionError, match='There is no CA named "mysql"'):
        tls.create_ca_signed_cert("mysql", "db1", cacert_path=str(tmp_path))
    _make_ca(tmp_path)
    with pytest.raises(CommandExecutionError, match="There is no CSR"):
        tls.create_ca_signed_cert("mysql", "db1", cacert_path=str(tmp_path))
    tls.create_csr("mysql", CN="db1", csr_filename="alias", cacert_path=str(tmp_path))
    with pytest.raises(CommandExecutionError, match='is for CN "db1", not "db2"'):
        tls.create_ca_signed_cert("mysql", "db2", cert_filename="alias", cacert_path=str(tmp_path))
    with pytest.raises(CommandExecutionError, match="cert_type"):
        tls.create_ca_signed_cert("mysql", "db1", cacert_path=str(tmp_path), cert_type="peer")


# --------------------------------------------------------------------------- imports


def test_no_pyopenssl_import():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import mysqlrepl_tls; "
        "assert 'OpenSSL' not in sys.modules, 'pyOpenSSL was imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "_utils")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- fit with pillar


def _spec(**over):
    spec = {"cn": "db1", "subject": dict(SUBJECT, emailAddress="dba@example.com"),
            "san": ["10.0.0.11", "db1.example"]}
    spec.update(over)
    return spec


def test_a_certificate_that_fits_pillar(pki):
    key_fp = tls.key_public_sha256(str(pki["key"]))
    ca_pem = pki["ca_crt"].read_text()
    assert tls.cert_problem(_spec(), pki["cert"], key_fp, ca_pem, renew_days=10) is None
    assert tls.csr_fits(_spec(), pki["csr"], key_fp)


def test_a_certificate_that_does_not_fit_says_why(pki, tmp_path):
    key_fp = tls.key_public_sha256(str(pki["key"]))
    ca_pem = pki["ca_crt"].read_text()
    assert tls.cert_problem(_spec(cn="db2"), pki["cert"], key_fp, ca_pem, 10).startswith("subject is ")
    assert tls.cert_problem(_spec(san=["10.0.0.11"]), pki["cert"], key_fp, ca_pem, 10).startswith(
        "subjectAltName is 10.0.0.11, db1.example, want 10.0.0.11")
    assert tls.cert_problem(_spec(), pki["cert"], key_fp, ca_pem, 30) == "expires in 30 days (renew at 30 days left)"
    # pillar shortened the lifetime: a 30-day certificate is re-issued under a 7-day one
    assert tls.cert_problem(_spec(), pki["cert"], key_fp, ca_pem, 1, cert_days=7) == (
        "valid for 30 days more, longer than tls:cert_days (7 days): re-issued")
    assert tls.cert_problem(_spec(), pki["cert"], key_fp, ca_pem, 1, cert_days=30) is None
    assert tls.cert_problem(_spec(), pki["cert"], key_fp, ca_pem, 40.5) == (
        "expires in 30 days (renew at 40 days left)")
    assert tls.cert_problem(_spec(), pki["cert"], key_fp, ca_pem, 1, cert_days=0.01) == (
        "valid for 30 days more, longer than tls:cert_days (14 minutes): re-issued")
    assert tls.cert_problem(_spec(), pki["cert"], "0" * 64, ca_pem, 10) == "does not match the key"
    other_ca, _ = _make_ca(tmp_path / "other", name="other")
    assert tls.cert_problem(_spec(), pki["cert"], key_fp, other_ca.read_text(), 10) == "not signed by the topology CA"
    assert tls.cert_problem(_spec(), pki["cert"], key_fp, None, 10) == "not signed by the topology CA"
    assert not tls.csr_fits(_spec(san=["db1.example"]), pki["csr"])
    assert not tls.csr_fits(_spec(), pki["csr"], key_fp="0" * 64)


def test_key_problem_names_mode_and_owner():
    assert tls.key_problem({"mode_ok": True, "owner_ok": True, "mode": "0600"}, "mysql") is None
    assert tls.key_problem({"mode_ok": False, "owner_ok": False, "mode": "0644"}, "mysql") == (
        "mode 0644 (want 0600), owner (want mysql)")


def test_a_lifetime_of_a_fraction_of_a_day_is_minutes(pki):
    """tls:cert_days 0.01 (rotation drills): the certificate ends 14.4 minutes after it is signed."""
    cert = tls.sign_csr(pki["csr"], str(pki["ca_crt"]), str(pki["ca_key"]), days=0.01)
    left = tls.cert_info(cert)["days_remaining"] * 1440
    assert 14.0 < left <= 14.4, left
    for bad in (0, -1, "x", True, None):
        with pytest.raises(CommandExecutionError):
            tls.sign_csr(pki["csr"], str(pki["ca_crt"]), str(pki["ca_key"]), days=bad)
