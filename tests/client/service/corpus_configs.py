"""Bad deployment and federation TOML files for the bad-input corpus: the server's and a
site's deployment settings (`festa.server.deploy`, `festa.client.deploy` through
`festa.shared.deploy.load_settings`), federation files (`festa.shared.federation_file`) and
federation configs (`festa.shared.config.load_toml`). Each generator derives its items from a
good file, which the corpus test also checks is accepted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def server_good(root: Path, cdir: Path) -> str:
    """A valid server.toml (TLS with the certificates in `cdir`)."""
    return f'''[server]
host = "127.0.0.1"
port = 19092
state-dir = "{root}/state"
certs = "{cdir}"

[body]
host = "127.0.0.1"
port = 19093

[console]
host = "127.0.0.1"
port = 18080

[run]
submit = false

[run.config]
rounds = 2
'''


def site_good(root: Path, cdir: Path) -> str:
    """A valid site-a.toml (TLS, node key and body certificate from `cdir`)."""
    return f'''[site]
id = "site-a"
task = "classification"
data = "phantoms"
state-dir = "{root}/site"

[superlink]
address = "127.0.0.1:19092"
ca = "{cdir}/ca.pem"

[auth]
private-key = "{cdir}/nodes/site-a.key"

[supernode]
port = 19094
'''


FEDERATION_GOOD = """[[site]]
id = "site-a"
task = "classification"
data = "phantoms"

[[site]]
id = "site-b"
task = "segmentation"
data = "phantoms"
"""

CONFIG_GOOD = """rounds = 3
clients = 2
tasks = ["classification", "segmentation"]
local_steps = 2

[model]
image_size = 32
patch_size = 8
embed_dim = 32
depth = 1
num_heads = 2
"""


def server_corpus(base: str, root: Path, cdir: Path) -> Iterator[str]:
    """Bad server.toml files: syntax, unknown keys, ports, certificates, bind rules, run.config."""
    yield base + "\n[[broken"
    yield "stray = 1\n" + base
    yield base.replace("[console]", "[consol]")
    for old, new in [
        ("port = 19092", "port = 0"),
        ("port = 19092", "port = 70000"),
        ("port = 19092", 'port = "x"'),
        ("port = 19093", "port = -1"),
        ("port = 19093", "port = 65536"),
        ("port = 18080", "port = 1.5"),
        ("port = 18080", "port = 99999"),
        (f'certs = "{cdir}"', f'certs = "{root}/nowhere"'),
        (f'certs = "{cdir}"', "certs = 5"),
        (f'certs = "{cdir}"', f'certs = "{root}"'),
        ('host = "127.0.0.1"\nport = 18080', 'host = "0.0.0.0"\nport = 18080'),
        ("submit = false", 'submit = true\napp = "/nonexistent-app"'),
        ("submit = false", 'submit = "yes please"'),
        ("rounds = 2", "rounds = [1, 2]"),
        ("rounds = 2", "rounds = {a = 1}"),
        (
            '[server]\nhost = "127.0.0.1"',
            '[server]\nhost = "127.0.0.1"\ninsecure = true\nconnection = 5',
        ),
        ("port = 19093", 'port = 19093\nendpoint = "body.example.org"'),
        ("port = 19093", 'port = 19093\nendpoint = "body.example.org:99999"'),
        ("port = 19093", 'port = 19093\nendpoint = ":9093"'),
        ("rounds = 2", "rounds = 0"),
        ("rounds = 2", "rounds = 2\nno-such-key = 1"),
        ("rounds = 2", 'rounds = 2\ntasks = "regression"'),
        ("rounds = 2", 'rounds = 2\n"model.image-size" = 33'),
        ("rounds = 2", 'rounds = 2\npreset = "huge"'),
        ("rounds = 2", 'rounds = 2\nmodel = 5\n"model.depth" = 2'),
        ("rounds = 2", 'rounds = 2\nmode = "turbo"'),
        ("rounds = 2", 'rounds = 2\nwire = "fp64"'),
        (f'state-dir = "{root}/state"', "state-dir = 12"),
    ]:
        assert old in base, old
        yield base.replace(old, new, 1)
    yield base.replace(
        '[server]\nhost = "127.0.0.1"', '[server]\nhost = "10.0.0.5"\ninsecure = true'
    )


def site_corpus(base: str, root: Path, cdir: Path) -> Iterator[str]:
    """Bad site TOML files: ids, tasks, data, addresses, key and certificate files, --insecure."""
    yield base + "\n[[broken"
    yield base + "\nstray = 1\n"
    yield base.replace("[superlink]", "[super-link]")
    yield base.replace('id = "site-a"\n', "")
    for old, new in [
        ('id = "site-a"', 'id = ""'),
        ('id = "site-a"', 'id = "../etc/passwd"'),
        ('id = "site-a"', 'id = "a b"'),
        ('id = "site-a"', "id = 7"),
        ('id = "site-a"', 'id = "' + "x" * 80 + '"'),
        ('task = "classification"', 'task = "regression"'),
        ('task = "classification"', 'task = ""'),
        ('data = "phantoms"', 'data = "/nonexistent/data"'),
        ('data = "phantoms"', "data = 3"),
        ('address = "127.0.0.1:19092"', "address = 5"),
        (f'ca = "{cdir}/ca.pem"', f'ca = "{root}/none.pem"'),
        (f'private-key = "{cdir}/nodes/site-a.key"', f'private-key = "{root}/none.key"'),
        (f'private-key = "{cdir}/nodes/site-a.key"', 'body-cert = "/nonexistent.pem"'),
        ("port = 19094", "port = 0"),
        ("port = 19094", "port = 70000"),
        ("port = 19094", "port = 19094\nmax-retries = -1"),
        ("[supernode]", "[restoration]\nenabled = true\n[supernode]"),
        ("[supernode]", '[restoration]\nenabled = true\nconfig = "/nonexistent.toml"\n[supernode]'),
        ('address = "127.0.0.1:19092"', 'address = "10.0.0.9:19092"\ninsecure = true'),
    ]:
        assert old in base, old
        yield base.replace(old, new, 1)
    yield base.replace(f'ca = "{cdir}/ca.pem"\n', "")


def federation_corpus(base: str) -> Iterator[str]:
    """Bad federation files: no sites, duplicate or unsafe ids, tasks, data, shards, filters."""
    yield base + "\n[[broken"
    yield ""
    yield "site = []\n"
    yield "site = 5\n"
    yield base + "\nstray = 1\n"
    yield base.replace('id = "site-b"', 'id = "site-a"')
    for old, new in [
        ('id = "site-a"', 'id = ""'),
        ('id = "site-a"', 'id = "../../x"'),
        ('id = "site-a"', 'id = "-lead"'),
        ('task = "classification"', 'task = "regression"'),
        ('task = "segmentation"', "task = 1"),
        ('data = "phantoms"', 'data = "no-such-folder"'),
        ('data = "phantoms"', "data = true"),
        ('data = "phantoms"', 'data = "phantoms"\nphantoms = 0'),
        ('data = "phantoms"', 'data = "phantoms"\npatient-shard = "3/2"'),
        ('data = "phantoms"', 'data = "phantoms"\npatient-shard = "a/b"'),
        ('data = "phantoms"', 'data = "phantoms"\npatient-shard = "0/4"'),
        ('data = "phantoms"', 'data = "phantoms"\npatient-shard = "1"'),
        ('data = "phantoms"', 'data = "phantoms"\nsites = "kermany"'),
        ('data = "phantoms"', 'data = "phantoms"\nclasses = [1, 2]'),
        ('data = "phantoms"', 'data = "phantoms"\nunknown-key = 1'),
    ]:
        yield base.replace(old, new, 1)
    yield base.replace('data = "phantoms"\n', "", 1)


def config_corpus(base: str) -> Iterator[str]:
    """Bad federation configs (`festa simulate --config`): ranges, sizes, names, combinations."""
    yield base + "\n[[broken"
    yield base + "\nstray = 1\n"
    for old, new in [
        ("rounds = 3", "rounds = 0"),
        ("rounds = 3", "rounds = -1"),
        ("rounds = 3", 'rounds = "3"x'),
        ("rounds = 3", 'rounds = "three"'),
        ("clients = 2", "clients = 1"),
        ("clients = 2", "clients = 0"),
        ('tasks = ["classification", "segmentation"]', 'tasks = ["regression"]'),
        ('tasks = ["classification", "segmentation"]', "tasks = []"),
        ('tasks = ["classification", "segmentation"]', 'tasks = "classification"'),
        ("local_steps = 2", "local_steps = 0"),
        ("image_size = 32", "image_size = 33"),
        ("image_size = 32", "image_size = 8"),
        ("image_size = 32", "image_size = 100000"),
        ("patch_size = 8", "patch_size = 0"),
        ("embed_dim = 32", "embed_dim = 31"),
        ("depth = 1", "depth = 0"),
        ("num_heads = 2", "num_heads = 0"),
        ("local_steps = 2", 'local_steps = 2\nwire = "fp64"'),
        ("local_steps = 2", 'local_steps = 2\nmode = "turbo"'),
        ("local_steps = 2", "local_steps = 2\npipeline_depth = 4"),
        ("local_steps = 2", "local_steps = 2\npipeline_depth = 0"),
        ("local_steps = 2", "local_steps = 2\nbody_port = 70000"),
        ("local_steps = 2", "local_steps = 2\nstep_deadline_s = 0"),
        ("local_steps = 2", "local_steps = 2\nround_timeout_s = -5"),
        ("local_steps = 2", "local_steps = 2\nrejoin_wait_s = -1"),
        ("local_steps = 2", "local_steps = 2\ntoken_noise = -0.1"),
        ("local_steps = 2", 'local_steps = 2\nrestore = "magic"'),
        ("local_steps = 2", "local_steps = 2\nrestore_nfe = 0"),
        ("local_steps = 2", 'local_steps = 2\ndegrade = "all"'),
        ("local_steps = 2", 'local_steps = 2\npipeline_body_lr = "cubic"'),
        ("local_steps = 2", "local_steps = 2\n[optim]\nlr = 0"),
        ("local_steps = 2", "local_steps = 2\n[optim]\nbatch_size = 0"),
        ("local_steps = 2", "local_steps = 2\n[optim]\nweight_decay = -1"),
        ("local_steps = 2", "local_steps = 2\n[schedule]\nunify_every = 0"),
        ("local_steps = 2", "local_steps = 2\n[data]\ntrain_size = 0"),
        ("local_steps = 2", "local_steps = 2\n[fault]\nround = -1"),
        ("num_heads = 2", 'num_heads = 2\nclass_names = ["a"]'),
        ("num_heads = 2", "num_heads = 2\npixel_std = 0"),
        ("num_heads = 2", "num_heads = 2\nin_chans = 4"),
    ]:
        assert old in base, old
        yield base.replace(old, new, 1)
