"""
CA, private key, CSR and certificate handling for mysqlrepl, built on ``cryptography`` only.

Salt's ``tls`` execution module needs pyOpenSSL APIs that pyOpenSSL >= 25 no longer has; the
file functions here (``create_ca``, ``create_csr``, ``create_ca_signed_cert``) keep its call
shape and file layout, and return ``(changed, message)`` instead of a bare message.

Plain Python module: importable by unit tests and loaded by Salt as
``__utils__["mysqlrepl_tls.<func>"]``. Only modules and classes are imported at top level so the
Salt loader exposes nothing but the functions defined here. Key material is never logged or put
into exception messages.
"""

import datetime
import grp
import hashlib
import ipaddress
import os
import pwd
import re
import secrets
import stat

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from salt.exceptions import CommandExecutionError

MIN_BITS = 2048
# Certificates are back-dated this much to tolerate clock skew between minions.
BACKDATE = datetime.timedelta(minutes=5)

_DIGESTS = {
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

# Subject fields accepted from callers, in the order they are written into a name.
_SUBJECT_FIELDS = (
    ("C", NameOID.COUNTRY_NAME),
    ("ST", NameOID.STATE_OR_PROVINCE_NAME),
    ("L", NameOID.LOCALITY_NAME),
    ("O", NameOID.ORGANIZATION_NAME),
    ("OU", NameOID.ORGANIZATIONAL_UNIT_NAME),
    ("CN", NameOID.COMMON_NAME),
    ("emailAddress", NameOID.EMAIL_ADDRESS),
)

# OpenSSL short names (OBJ_nid2sn), as printed by X509_NAME_oneline.
_SHORT_NAMES = {
    NameOID.COUNTRY_NAME: "C",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COMMON_NAME: "CN",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.STREET_ADDRESS: "street",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.USER_ID: "UID",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.SURNAME: "SN",
    NameOID.GIVEN_NAME: "GN",
    NameOID.TITLE: "title",
    NameOID.INITIALS: "initials",
    NameOID.GENERATION_QUALIFIER: "generationQualifier",
    NameOID.DN_QUALIFIER: "dnQualifier",
    NameOID.PSEUDONYM: "pseudonym",
    NameOID.POSTAL_CODE: "postalCode",
    NameOID.BUSINESS_CATEGORY: "businessCategory",
    NameOID.ORGANIZATION_IDENTIFIER: "organizationIdentifier",
    NameOID.UNSTRUCTURED_NAME: "unstructuredName",
}

_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
}

_USAGES = {
    "server": [ExtendedKeyUsageOID.SERVER_AUTH],
    "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
    "server_client": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
}

# cert_type of the salt-shaped file functions -> usage. Replicas present their server
# certificate as client certificate, so "server" certificates carry both purposes.
_CERT_TYPES = {"server": "server_client", "client": "client"}

_DNS_RE = re.compile(r"^(\*\.)?[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?$")


# --------------------------------------------------------------------------- helpers


def _digest(digest):
    """Return a hash instance for a digest name such as ``sha256`` or ``SHA-384``."""
    name = str(digest).lower().replace("-", "")
    if name not in _DIGESTS:
        raise CommandExecutionError(
            f'Unsupported digest "{digest}"; use one of {", ".join(sorted(_DIGESTS))}'
        )
    return _DIGESTS[name]()


def _int_at_least(value, what, minimum):
    """Return ``value`` (an int or a decimal string) as int, raising unless it is >= ``minimum``."""
    try:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError
        number = int(value)
    except ValueError:
        raise CommandExecutionError(f"{what} must be an integer, got {value!r}") from None
    if number < minimum:
        raise CommandExecutionError(f"{what} must be at least {minimum}, got {number}")
    return number


def _days_positive(value, what="days"):
    """A certificate lifetime in days: an int, a float (0.01 = 14.4 minutes, rotation drills) or a decimal string."""
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        number = float(value)
    except ValueError:
        raise CommandExecutionError(f"{what} must be a number of days, got {value!r}") from None
    if not number > 0:
        raise CommandExecutionError(f"{what} must be greater than 0, got {value!r}")
    return number


def _usage(usage):
    """Return the extended key usage OIDs for a usage name."""
    if usage not in _USAGES:
        raise CommandExecutionError(
            f'Unknown usage "{usage}"; use one of {", ".join(sorted(_USAGES))}'
        )
    return _USAGES[usage]


def _cert_type_usage(cert_type):
    """Map a salt-style ``cert_type`` to a usage name."""
    if cert_type not in _CERT_TYPES:
        raise CommandExecutionError(f'cert_type must be "server" or "client", got "{cert_type}"')
    return _CERT_TYPES[cert_type]


def _as_bytes(pem):
    """PEM text given as str or bytes -> bytes."""
    return pem.encode("ascii") if isinstance(pem, str) else bytes(pem)


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def write_atomic(path, data, mode, uid=None, gid=None):
    """
    Write ``data`` (bytes, or text as UTF-8) to ``path`` via a temp file in the same
    directory and ``os.replace``; the formula's one file writer (keys, certificates,
    config drop-ins, leases, the master record).

    The temp file is created with mode 0600, then given ``mode`` and owner before it is
    renamed into place, so readers never see partial content or looser permissions; the
    file and its directory are fsynced, so the rename survives a crash.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            if uid is not None or gid is not None:
                os.fchown(handle.fileno(), -1 if uid is None else uid, -1 if gid is None else gid)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _make_dir(path, mode):
    """Create ``path`` (and parents) if missing; a newly created leaf gets exactly ``mode``."""
    if not os.path.isdir(path):
        os.makedirs(path, mode=mode)
        os.chmod(path, mode)


def _uid(user):
    """Numeric uid for an int, a numeric string or a user name (None passes through)."""
    if user is None or isinstance(user, int):
        return user
    if str(user).isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError as exc:
        raise CommandExecutionError(f'Unknown user "{user}"') from exc


def _gid(group):
    """Numeric gid for an int, a numeric string or a group name (None passes through)."""
    if group is None or isinstance(group, int):
        return group
    if str(group).isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError as exc:
        raise CommandExecutionError(f'Unknown group "{group}"') from exc


def _generate_key_pem(bits):
    """New RSA key as unencrypted PKCS8 PEM bytes."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(path):
    """Load an unencrypted PEM private key from ``path``."""
    try:
        data = _read(path)
    except OSError as exc:
        raise CommandExecutionError(f'Cannot read private key "{path}": {exc.strerror}') from exc
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # The library's message is not included: never risk echoing key material.
        raise CommandExecutionError(
            f'"{path}" is not an unencrypted PEM private key'
        ) from exc


def _load_cert(cert_pem):
    """Parse a PEM certificate."""
    try:
        return x509.load_pem_x509_certificate(_as_bytes(cert_pem))
    except ValueError as exc:
        raise CommandExecutionError(f"Invalid PEM certificate: {exc}") from exc


def _load_csr(csr_pem):
    """Parse a PEM CSR and check its self-signature."""
    try:
        csr = x509.load_pem_x509_csr(_as_bytes(csr_pem))
    except ValueError as exc:
        raise CommandExecutionError(f"Invalid PEM certificate signing request: {exc}") from exc
    if not csr.is_signature_valid:
        raise CommandExecutionError("Certificate signing request signature is invalid")
    return csr


def _public_sha256(public_key):
    """SHA-256 hex of a public key's DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _name(CN, subject):
    """Build an x509 Name from CN and a dict of C/ST/L/O/OU/emailAddress."""
    subject = dict(subject or {})
    unknown = set(subject) - {field for field, _ in _SUBJECT_FIELDS if field != "CN"}
    if unknown:
        raise CommandExecutionError(f"Unknown subject fields: {', '.join(sorted(unknown))}")
    if not CN:
        raise CommandExecutionError("CN must not be empty")
    subject["CN"] = CN
    try:
        return x509.Name(
            [
                x509.NameAttribute(oid, str(subject[field]))
                for field, oid in _SUBJECT_FIELDS
                if subject.get(field) not in (None, "")
            ]
        )
    except ValueError as exc:
        raise CommandExecutionError(f"Invalid subject: {exc}") from exc


def _short_name(oid):
    """OpenSSL short name of a name attribute type (dotted OID when unknown)."""
    return _SHORT_NAMES.get(oid, oid.dotted_string)


def _oneline_value(attribute):
    """
    Attribute value escaped as X509_NAME_oneline does: the raw string bytes, with bytes
    outside printable ASCII written as ``\\xHH``.
    """
    value = attribute.value
    if isinstance(value, str):
        encoding = {"BMPString": "utf-16-be", "UniversalString": "utf-32-be"}.get(
            attribute._type.name, "utf-8"  # pylint: disable=protected-access
        )
        value = value.encode(encoding)
    return "".join(chr(b) if 0x20 <= b <= 0x7E else f"\\x{b:02X}" for b in value)


def _name_oneline(name):
    """A Name in OpenSSL X509_NAME_oneline form (used by MariaDB REQUIRE SUBJECT/ISSUER)."""
    return "".join(f"/{_short_name(attr.oid)}={_oneline_value(attr)}" for attr in name)


def _name_dict(name):
    """A Name as {short name: value}; for repeated fields the first value wins."""
    result = {}
    for attr in name:
        result.setdefault(_short_name(attr.oid), attr.value)
    return result


def _general_name(entry):
    """
    One SAN entry -> x509 GeneralName. ``IP:x`` / ``DNS:x`` are explicit (case-insensitive
    prefix); a bare value is an IPAddress if it parses as an IP, otherwise a DNSName.
    """
    text = str(entry).strip()
    kind, sep, rest = text.partition(":")
    kind = kind.upper() if sep else ""
    if kind in ("IP", "DNS"):
        text = rest.strip()
    if kind != "DNS":
        try:
            return x509.IPAddress(ipaddress.ip_address(text))
        except ValueError:
            if kind == "IP":
                raise CommandExecutionError(f'Invalid IP address in SAN: "{text}"') from None
    if not _DNS_RE.match(text):
        raise CommandExecutionError(f'Invalid DNS name in SAN: "{text}"')
    return x509.DNSName(text)


def _san_list(subject_alt_name):
    """Split a salt-style subjectAltName (list or comma separated string) into entries."""
    if not subject_alt_name:
        return []
    if isinstance(subject_alt_name, str):
        subject_alt_name = subject_alt_name.split(",")
    return [str(item).strip() for item in subject_alt_name if str(item).strip()]


def _san_strings(extensions):
    """Sorted SAN entries of an extension list as strings (IPs in canonical form)."""
    try:
        names = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    result = []
    for general_name in names:
        if isinstance(general_name, (x509.DNSName, x509.IPAddress)):
            result.append(str(general_name.value))
        else:
            result.append(f"{type(general_name).__name__}:{general_name.value}")
    return sorted(result)


def _utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


# --------------------------------------------------------------------------- keys


def create_private_key(path, bits=2048, uid=None, gid=None):
    """
    Ensure an RSA private key (unencrypted PKCS8 PEM) exists at ``path`` with mode 0600 and,
    when given, owner ``uid`` / group ``gid`` (ids or names).

    A missing key is created atomically. An existing key keeps its content; only its mode and
    owner are fixed. Returns True if anything was created or changed.
    """
    uid, gid = _uid(uid), _gid(gid)
    if not os.path.lexists(path):
        bits = _int_at_least(bits, "bits", MIN_BITS)
        write_atomic(path, _generate_key_pem(bits), 0o600, uid, gid)
        return True
    status = key_status(path, uid, gid)
    if not status["mode_ok"]:
        os.chmod(path, 0o600)
    if not status["owner_ok"]:
        os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
    return not (status["mode_ok"] and status["owner_ok"])


def key_status(path, uid=None, gid=None):
    """
    Report on a key file without changing it (for ``test=True``):
    ``{exists, mode_ok, owner_ok, mode}`` with ``mode`` an octal string such as ``"0600"``.
    """
    uid, gid = _uid(uid), _gid(gid)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {"exists": False, "mode_ok": False, "owner_ok": False, "mode": None}
    mode = stat.S_IMODE(st.st_mode)
    return {
        "exists": True,
        "mode_ok": mode == 0o600,
        "owner_ok": (uid is None or st.st_uid == uid) and (gid is None or st.st_gid == gid),
        "mode": f"{mode:04o}",
    }


def key_public_sha256(key_path):
    """SHA-256 hex of the DER SubjectPublicKeyInfo of the key at ``key_path``."""
    return _public_sha256(_load_key(key_path).public_key())


# --------------------------------------------------------------------------- CSRs


def build_csr(key_path, CN, subject=None, san=None, digest="sha256"):
    """
    Build a CSR PEM (str) for the key at ``key_path``.

    ``subject``: dict with optional C, ST, L, O, OU, emailAddress. ``san``: list of names; each
    that parses as an IP becomes an IPAddress entry, anything else a DNSName (``IP:`` / ``DNS:``
    prefixes are also understood).
    """
    hash_alg = _digest(digest)
    key = _load_key(key_path)
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(CN, subject))
    names = []
    for entry in san or []:
        general_name = _general_name(entry)
        if general_name not in names:
            names.append(general_name)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    csr = builder.sign(key, hash_alg)
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def csr_info(csr_pem):
    """
    Describe a CSR: ``{CN, subject, subject_str, san, public_key_sha256}``.

    Raises CommandExecutionError if the CSR cannot be parsed or its signature is invalid.
    """
    csr = _load_csr(csr_pem)
    subject = _name_dict(csr.subject)
    return {
        "CN": subject.get("CN"),
        "subject": subject,
        "subject_str": _name_oneline(csr.subject),
        "san": _san_strings(csr.extensions),
        "public_key_sha256": _public_sha256(csr.public_key()),
    }


# --------------------------------------------------------------------------- certificates


def sign_csr(csr_pem, ca_cert_path, ca_key_path, days=365, digest="sha256", usage="server_client"):
    """
    Issue a certificate (PEM str) for a CSR with the CA at ``ca_cert_path`` / ``ca_key_path``.

    ``usage``: "server" (serverAuth), "client" (clientAuth) or "server_client" (both).
    Subject and SAN are copied from the CSR; validity starts 5 minutes ago and ends after
    ``days`` days (a fraction is fine), clipped to the CA's own notAfter.
    """
    days = _days_positive(days)
    hash_alg = _digest(digest)
    eku = _usage(usage)
    csr = _load_csr(csr_pem)
    try:
        ca_cert = _load_cert(_read(ca_cert_path))
    except OSError as exc:
        raise CommandExecutionError(
            f'Cannot read CA certificate "{ca_cert_path}": {exc.strerror}'
        ) from exc
    ca_key = _load_key(ca_key_path)
    if _public_sha256(ca_key.public_key()) != _public_sha256(ca_cert.public_key()):
        raise CommandExecutionError(
            f'CA key "{ca_key_path}" does not belong to CA certificate "{ca_cert_path}"'
        )
    try:
        is_ca = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CommandExecutionError(f'"{ca_cert_path}" is not a CA certificate')

    now = _utcnow()
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    if not_after <= now:
        raise CommandExecutionError(f'CA certificate "{ca_cert_path}" has expired')
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())

    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(aki, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
    )
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        builder = builder.add_extension(san.value, critical=san.critical)
    except x509.ExtensionNotFound:
        pass
    cert = builder.sign(ca_key, hash_alg)
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def cert_info(cert_pem):
    """
    Describe a certificate: ``{subject, subject_str, issuer_str, serial, not_before, not_after,
    days_remaining, san, eku, public_key_sha256}``.

    ``subject_str`` / ``issuer_str`` use OpenSSL's X509_NAME_oneline form
    (``/C=US/ST=Utah/.../CN=db1``), which is what MariaDB compares REQUIRE SUBJECT / ISSUER
    against. Times are ISO 8601 in UTC; ``serial`` is lower-case hex.
    """
    cert = _load_cert(cert_pem)
    try:
        eku_oids = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku_oids = []
    not_after = cert.not_valid_after_utc
    return {
        "subject": _name_dict(cert.subject),
        "subject_str": _name_oneline(cert.subject),
        "issuer_str": _name_oneline(cert.issuer),
        "serial": f"{cert.serial_number:x}",
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": not_after.isoformat(),
        "days_remaining": (not_after - _utcnow()).total_seconds() / 86400,
        "san": _san_strings(cert.extensions),
        "eku": [_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku_oids],
        "public_key_sha256": _public_sha256(cert.public_key()),
    }


def cert_matches_key(cert_pem, key_path):
    """True if the certificate's public key is the public half of the key at ``key_path``."""
    return _public_sha256(_load_cert(cert_pem).public_key()) == key_public_sha256(key_path)


def cert_signed_by(cert_pem, ca_cert_pem):
    """True if the certificate's issuer is the CA's subject and the CA key signed it."""
    cert, ca_cert = _load_cert(cert_pem), _load_cert(ca_cert_pem)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# --------------------------------------------------------------------------- salt tls shape


def _ca_paths(ca_name, cacert_path, ca_filename):
    """(CA directory, CA cert path, CA key path) in salt tls layout."""
    if not ca_name or os.sep in ca_name or ca_name in (".", ".."):
        raise CommandExecutionError(f'Invalid CA name "{ca_name}"')
    ca_dir = os.path.join(cacert_path, ca_name)
    stem = os.path.join(ca_dir, ca_filename or f"{ca_name}_ca_cert")
    return ca_dir, f"{stem}.crt", f"{stem}.key"


def create_ca(
    ca_name,
    bits=2048,
    days=365,
    CN="localhost",
    C="US",
    ST="Utah",
    L="Salt Lake City",
    O="SaltStack",
    OU=None,
    emailAddress=None,
    fixmode=False,
    cacert_path="/etc/pki",
    ca_filename=None,
    digest="sha256",
    replace=False,
):
    """
    Create a self-signed CA at ``<cacert_path>/<ca_name>/<ca_filename>.{crt,key}``
    (``ca_filename`` defaults to ``<ca_name>_ca_cert``). Returns ``(changed, message)``.

    An existing CA is left alone unless ``replace`` (or ``fixmode``, which additionally requires
    the certificate to exist) is set; the certificate is then re-issued with the existing key,
    so certificates it issued stay verifiable. The key is only generated when absent.
    """
    bits = _int_at_least(bits, "bits", MIN_BITS)
    days = _int_at_least(days, "days", 1)
    hash_alg = _digest(digest)
    ca_dir, crt_path, key_path = _ca_paths(ca_name, cacert_path, ca_filename)
    crt_exists, key_exists = os.path.exists(crt_path), os.path.exists(key_path)

    if fixmode and not crt_exists:
        raise CommandExecutionError(f'"{crt_path}" does not exist, cannot fix')
    if crt_exists and not (replace or fixmode):
        if not key_exists:
            raise CommandExecutionError(
                f'CA certificate "{crt_path}" exists but its key "{key_path}" is missing'
            )
        return False, f'Certificate "{ca_name}" already exists'

    name = _name(CN, {"C": C, "ST": ST, "L": L, "O": O, "OU": OU, "emailAddress": emailAddress})
    os.makedirs(ca_dir, mode=0o700, exist_ok=True)
    os.chmod(ca_dir, 0o700)

    if key_exists:
        os.chmod(key_path, 0o600)
        message = f'Reused Private Key: "{key_path}" '
    else:
        write_atomic(key_path, _generate_key_pem(bits), 0o600)
        message = f'Created Private Key: "{key_path}" '
    key = _load_key(key_path)

    now = _utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hash_alg)
    )
    write_atomic(crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return True, message + f'Created CA "{ca_name}": "{crt_path}"'


def create_csr(
    ca_name,
    bits=2048,
    CN="localhost",
    C=None,
    ST=None,
    L=None,
    O=None,
    OU=None,
    emailAddress=None,
    subjectAltName=None,
    cacert_path="/etc/pki",
    csr_path=None,
    csr_filename=None,
    digest="sha256",
    cert_type="server",
    replace=False,
):
    """
    Write ``<csr_path>/<csr_filename or CN>.csr`` and its key ``.key`` (0600); ``csr_path``
    defaults to ``<cacert_path>/<ca_name>/certs``. Returns ``(changed, message)``.

    ``subjectAltName``: list, or comma separated string such as ``"DNS:a.example, IP:10.0.0.1"``
    (bare names allowed). An existing CSR is kept unless ``replace``, which also makes a new
    key; otherwise an existing key is reused. ``cert_type`` ("server"/"client") is validated for
    call-shape compatibility; the purpose is decided when signing.
    """
    _cert_type_usage(cert_type)
    _digest(digest)
    bits = _int_at_least(bits, "bits", MIN_BITS)
    csr_dir = csr_path or os.path.join(cacert_path, ca_name, "certs")
    stem = os.path.join(csr_dir, csr_filename or CN)
    csr_file, key_file = f"{stem}.csr", f"{stem}.key"
    if not replace and os.path.exists(csr_file):
        return False, f'Certificate Request "{csr_file}" already exists'

    subject = {"C": C, "ST": ST, "L": L, "O": O, "OU": OU, "emailAddress": emailAddress}
    san = _san_list(subjectAltName)
    _name(CN, subject)  # validate before touching any file
    for entry in san:
        _general_name(entry)

    _make_dir(csr_dir, 0o700)
    message = ""
    if replace or not os.path.exists(key_file):
        write_atomic(key_file, _generate_key_pem(bits), 0o600)
        message = f'Created Private Key: "{key_file}" '
    else:
        create_private_key(key_file)
    pem = build_csr(key_file, CN, subject=subject, san=san, digest=digest)
    write_atomic(csr_file, pem.encode("ascii"), 0o644)
    return True, message + f'Created CSR for "{CN}": "{csr_file}"'


def _cert_is_current(cert_pem, ca_pem, request, usage):
    """True if an issued cert is signed by the CA, unexpired, and matches the CSR and usage."""
    try:
        info = cert_info(cert_pem)
    except CommandExecutionError:
        return False
    return (
        cert_signed_by(cert_pem, ca_pem)
        and info["days_remaining"] > 0
        and info["public_key_sha256"] == request["public_key_sha256"]
        and info["subject_str"] == request["subject_str"]
        and info["san"] == request["san"]
        and info["eku"] == [_EKU_NAMES[oid] for oid in _USAGES[usage]]
    )


def create_ca_signed_cert(
    ca_name,
    CN,
    days=365,
    cacert_path="/etc/pki",
    ca_filename=None,
    cert_path=None,
    cert_filename=None,
    digest="sha256",
    cert_type="server",
    replace=False,
):
    """
    Sign ``<cert_path>/<cert_filename or CN>.csr`` (as written by ``create_csr``) with the CA
    and write the certificate next to it as ``.crt``. ``cert_path`` defaults to
    ``<cacert_path>/<ca_name>/certs``. Returns ``(changed, message)``.

    ``cert_type`` "server" issues serverAuth+clientAuth (replicas use their server certificate
    as client certificate), "client" issues clientAuth. An existing certificate that is signed by
    this CA, unexpired and matches the CSR and cert_type is kept unless ``replace``.
    """
    usage = _cert_type_usage(cert_type)
    _, ca_crt, ca_key = _ca_paths(ca_name, cacert_path, ca_filename)
    if not (os.path.exists(ca_crt) and os.path.exists(ca_key)):
        raise CommandExecutionError(f'There is no CA named "{ca_name}"')
    filename = cert_filename or CN
    stem = os.path.join(cert_path or os.path.join(cacert_path, ca_name, "certs"), filename)
    csr_file, crt_file = f"{stem}.csr", f"{stem}.crt"
    try:
        csr_pem = _read(csr_file)
    except FileNotFoundError:
        raise CommandExecutionError(f'There is no CSR "{csr_file}" for "{CN}"') from None
    request = csr_info(csr_pem)
    if request["CN"] != CN:
        raise CommandExecutionError(
            f'CSR "{csr_file}" is for CN "{request["CN"]}", not "{CN}"'
        )

    if (
        not replace
        and os.path.exists(crt_file)
        and _cert_is_current(_read(crt_file), _read(ca_crt), request, usage)
    ):
        return False, f'Certificate "{filename}" already exists'

    pem = sign_csr(csr_pem, ca_crt, ca_key, days=days, digest=digest, usage=usage)
    write_atomic(crt_file, pem.encode("ascii"), 0o644)
    return True, f'Created Certificate for "{CN}": "{crt_file}"'


def subject_string(CN, subject=None):  # pylint: disable=invalid-name
    """
    The X509_NAME_oneline form (as MariaDB's REQUIRE SUBJECT compares it) of the
    subject ``build_csr(key, CN, subject)`` produces.
    """
    return _name_oneline(_name(CN, subject))


# ---------------------------------------------------------------------------
# does what is on disk fit what pillar asks (the execution module's TLS states)
# ---------------------------------------------------------------------------

# a certificate valid for longer than tls:cert_days by more than this was issued under a
# longer lifetime (pillar shortened it): re-issued. Slack for clocks that differ between minions.
LIFETIME_SLACK_DAYS = 1 / 24


def _days(days):
    return f"{days:.0f} days" if abs(days) >= 1 else f"{days * 1440:.0f} minutes"


def cert_unfit(cert_spec, info, renew_days, cert_days=None):
    """
    Why a certificate (``cert_info`` of it) does not fit ``cert_spec`` (a server's
    ``certs`` entry of the validated pillar: ``cn``, ``subject``, ``san``), is due
    for renewal (``renew_days`` or fewer left), or outlives ``cert_days`` (pillar
    shortened the lifetime); ``None`` when it fits.
    """
    want = subject_string(cert_spec["cn"], cert_spec["subject"])
    if info["subject_str"] != want:
        return f"subject is {info['subject_str']}, want {want}"
    if sorted(info["san"]) != sorted(cert_spec["san"]):
        return (f"subjectAltName is {', '.join(info['san']) or 'empty'}, "
                f"want {', '.join(cert_spec['san']) or 'empty'}")
    if info["days_remaining"] <= renew_days:
        return f"expires in {_days(info['days_remaining'])} (renew at {_days(renew_days)} left)"
    if cert_days is not None and info["days_remaining"] > cert_days + LIFETIME_SLACK_DAYS:
        return (f"valid for {_days(info['days_remaining'])} more, longer than tls:cert_days "
                f"({_days(cert_days)}): re-issued")
    return None


def csr_fits(cert_spec, csr_pem, key_fp=None):
    """Does a CSR ask for exactly the subject and names of ``cert_spec`` (and, if given, this key)?"""
    csr = csr_info(csr_pem)
    return (csr["subject_str"] == subject_string(cert_spec["cn"], cert_spec["subject"])
            and sorted(csr["san"]) == sorted(cert_spec["san"])
            and (key_fp is None or csr["public_key_sha256"] == key_fp))


def cert_problem(cert_spec, pem, key_fp, ca_pem, renew_days, cert_days=None):
    """Why the certificate ``pem`` cannot serve as ``cert_spec`` with the key ``key_fp`` (None when it can)."""
    info = cert_info(pem)
    why = cert_unfit(cert_spec, info, renew_days, cert_days)
    if why:
        return why
    if info["public_key_sha256"] != key_fp:
        return "does not match the key"
    if not ca_pem or not cert_signed_by(pem, ca_pem):
        return "not signed by the topology CA"
    return None


def key_problem(status, os_user):
    """What is wrong with an existing key file's mode/owner (``key_status``), or ``None``."""
    wrong = []
    if not status["mode_ok"]:
        wrong.append(f"mode {status['mode']} (want 0600)")
    if not status["owner_ok"]:
        wrong.append(f"owner (want {os_user})")
    return ", ".join(wrong) or None
