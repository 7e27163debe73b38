"""Bad input, fuzzed: whatever a user hands loadtape (capture parts, HAR / flow / trace files,
scenario TOML, header / model-map / target / status arguments), the answer is a result or a
UserError with one line; never another exception, never a traceback from the command line, and
the good files beside a bad one stay readable. (Journal frames are fuzzed in test_journal.py,
SLO expressions in test_slo.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from clierrors import one_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from captures.errors import UserError
from captures.importers import ImportOptions, import_file
from captures.reader import Capture
from captures.testing import T0_NS, chat_record, write_capture
from replay.measure.results import Expect
from replay.targets import parse_header_args, parse_model_map, parse_targets
from replay.workload.scenario import load

CLI = [sys.executable, "-c", "import cli; cli.main()"]
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# -- capture parts --------------------------------------------------------------------------------
def _capture_with_bad_part(tmp_path: Path, damage: str) -> tuple[Path, Path]:
    cap = write_capture(tmp_path / "cap", [chat_record(start_ns=T0_NS + i) for i in range(5)])
    good = next(cap.glob("parts/part-*.parquet"))
    bad = cap / "parts" / "part-wbad00000000-000000.parquet"
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "wrong schema":
        pq.write_table(pa.table({"x": [1, 2, 3]}), bad)
    elif damage == "newer format":
        t = pq.read_table(good)
        meta = dict(t.schema.metadata or {})
        for k in list(meta):
            if b"format" in k and b"version" in k:
                meta[k] = b"999"
        pq.write_table(t.replace_schema_metadata(meta), bad)
    elif damage == "not parquet":
        bad.write_bytes(b"PAR1 this is not a parquet file at all")
    bad.chmod(0o600)
    return cap, bad


@pytest.mark.parametrize("damage", ["truncated", "wrong schema", "newer format", "not parquet"])
def test_a_bad_part_gets_one_line_naming_it(tmp_path: Path, damage: str) -> None:
    cap, bad = _capture_with_bad_part(tmp_path, damage)
    p = subprocess.run([*CLI, "inspect", str(cap)], capture_output=True, text=True, timeout=60)
    one_line(p, 2)
    assert bad.name in p.stderr, p.stderr
    for f in cap.glob("parts/part-*.parquet"):  # nothing was deleted or rewritten
        assert f.exists()
    bad.unlink()
    assert len(Capture(cap).records()) == 5  # the good part is intact


# -- import files ---------------------------------------------------------------------------------
FORMATS = ["har", "mitmproxy", "azure", "mooncake", "burstgpt", "sharegpt"]
texts = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=300).map(str.encode),
    st.sampled_from(
        [
            b"{}",
            b"[]",
            b'{"log": {"entries": [{}]}}',
            b'{"log": 5}',
            b"TIMESTAMP,ContextTokens,GeneratedTokens\r\n1,2",
            b"[{}]",
            b'{"timestamp": "x"}\n',
            b"\xef\xbb\xbf",
        ]
    ),
)


@FUZZ
@given(fmt=st.sampled_from(FORMATS), data=texts)
def test_import_of_anything_is_a_capture_or_a_user_error(
    tmp_path_factory: pytest.TempPathFactory, fmt: str, data: bytes
) -> None:
    d = tmp_path_factory.mktemp("imp")
    src = d / "input"
    src.write_bytes(data)
    try:
        s = import_file(fmt, src, d / "cap", ImportOptions())
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert s.records > 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_import_cli_on_garbage(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "garbage"
    src.write_bytes(b"\x00\xff garbage {[" * 10)
    p = subprocess.run(
        [
            *CLI,
            "import",
            fmt,
            str(src),
            "--out",
            str(tmp_path / "cap"),
            *(["--arrival", "poisson:rate=5"] if fmt == "sharegpt" else []),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    one_line(p, 2)
    assert "garbage" in p.stderr  # names the file


# -- scenario TOML --------------------------------------------------------------------------------
toml_like = st.one_of(
    st.text(max_size=200),
    st.builds(
        lambda k, v: f'[[stream]]\nname = "s"\nkind = "synthetic"\n{k} = {v}\n',
        st.sampled_from(
            [
                "arrival",
                "request",
                "start",
                "duration",
                "speed",
                "kind",
                "capture",
                "amplify",
                "headers",
            ]
        ),
        st.sampled_from(
            [
                '"x"',
                "-1",
                "0",
                "1e400",
                "[1, 2]",
                '{ process = "poisson" }',
                '{ process = "poisson", rate = -3 }',
                '{ maker = "template" }',
                "true",
                '"30q"',
            ]
        ),
    ),
)


@FUZZ
@given(text=toml_like)
def test_scenario_files_load_or_name_the_problem(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    f = tmp_path_factory.mktemp("sc") / "scenario.toml"
    f.write_text(text)
    try:
        load(f, target="http://127.0.0.1:9")
    except UserError as exc:
        assert str(exc).startswith(str(f)) or "scenario" in str(exc).lower(), str(exc)


# -- arguments ------------------------------------------------------------------------------------
@FUZZ
@given(args=st.lists(st.text(max_size=40), max_size=4))
def test_argument_parsers_answer_or_refuse_in_one_line(args: list[str]) -> None:
    for parse in (
        lambda a: parse_header_args(a, {"KEY": "v"}),
        parse_model_map,
        parse_targets,
        lambda a: [Expect.parse(x) for x in a],
    ):
        try:
            parse(args)
        except UserError as exc:
            assert str(exc) and "\n" not in str(exc).strip()


def test_a_header_with_a_newline_in_a_name_is_one_line(tmp_path: Path) -> None:
    """Found by the fuzz test above: a CSV whose header is an open quote holds a name with a
    newline in it; the error named it raw, on two lines."""
    src = tmp_path / "input"
    src.write_bytes(b'"\n')
    with pytest.raises(UserError) as got:
        import_file("azure", src, tmp_path / "cap", ImportOptions())
    assert "\n" not in str(got.value)
    assert "no 'TIMESTAMP' column; found '\\n'" in str(got.value)
