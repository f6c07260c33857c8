"""The matrix page (lazyaccept.matrix.report) from real runs: nine cells, each `lazyaccept run FILE.toml --json` of
a scenario built from its axes (they boot, fail in the loader or the stub, lose memory, end with the TD terminated),
wrapped in the matrix's JSON Lines record as lazyaccept.matrix.output writes it; two harness cells (a crash, a
timeout) carry no run, as the executor writes them. The page's numbers are checked against the lines, the page is
rendered in Debian's chromium and its filter script run there."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lazyaccept import __version__
from lazyaccept.errors import InputError
from lazyaccept.matrix.report import CATEGORIES, summary, value_text, write_html
from lazyaccept.matrix.report import classify as classify_line
from tests.test_compare_report import chromium

BASE = {"loader": "direct", "kernel": "debian:linux-6.12", "ram": "4G", "vcpus": 8, "upfront": "below-4g",
        "on_demand": [], "initrd_size": "64M"}
CELLS = [  # what each does is the model's answer, checked below against the outcome the run reports
    {},
    {"initrd_size": "1G"},
    {"initrd_size": "1G", "upfront": "256M"},
    {"initrd_size": "1G", "upfront": "256M", "on_demand": ["allocator"]},
    {"initrd_size": "1G", "upfront": "256M", "ram": "64G"},
    {"initrd_size": "1G", "upfront": "256M", "ram": "64G", "on_demand": ["allocator"]},
    {"initrd_size": "1G", "upfront": "256M", "ram": "64G", "loader": "systemd-boot"},
    {"kernel": "debian:linux-6.1", "ram": "8G"},
    {"ram": "2815M", "vcpus": 4, "initrd_size": "16M"},  # edk2 2025.02's SEC drops PEI's memory: terminated
]
# The category each outcome falls in (the page's colours), written out here independently of the module's.
EXPECTED_CATEGORY = {"kernel-entry": "boots", "memory-lost": "memory-lost", "terminated": "terminated",
                     "loader-failed": "fails", "stub-exited": "fails"}


def scenario_toml(axes: dict) -> str:
    td = f'[td]\nram = "{axes["ram"]}"\nvcpus = {axes["vcpus"]}\n'
    fw = f'[firmware]\nupfront = "{axes["upfront"]}"\non_demand = {json.dumps(axes["on_demand"])}\n'
    loader = f'[loader]\nkind = "{axes["loader"]}"\n' if axes["loader"] != "direct" else ""
    payload = f'[payload]\nkernel = "{axes["kernel"]}"\ninitrd_size = "{axes["initrd_size"]}"\n'
    return td + fw + loader + payload


def label(axes: dict) -> str:
    return "/".join(value_text(axes[a]) for a in ("loader", "kernel", "ram", "vcpus", "upfront", "on_demand",
                                                  "initrd_size"))


def matrix_line(axes: dict, status: str, run: dict | None, *, log: str = "", cached: bool = False,
                attempts: int = 1, wall_s: float = 0.0) -> dict:
    key = hashlib.sha256(json.dumps(axes, sort_keys=True).encode()).hexdigest()
    return {"schema": 3, "lazyaccept": __version__, "command": "matrix-cell", "key": key, "label": label(axes),
            "axes": axes, "status": status, "attempts": attempts, "wall_s": wall_s, "worker": "local",
            "cached": cached, "log": log, "run": run}


def real_run(axes: dict, folder: Path) -> dict:
    toml = folder / f"{hashlib.sha256(label(axes).encode()).hexdigest()[:12]}.toml"
    toml.write_text(scenario_toml(axes))
    done = subprocess.run([sys.executable, "-m", "lazyaccept", "run", str(toml), "--json"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode in (0, 1, 3, 4), done.stderr  # an outcome, not a usage error
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    folder = tmp_path_factory.mktemp("cells")
    axes = [{**BASE, **c} for c in CELLS]
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(lambda a: real_run(a, folder), axes))
    out = [matrix_line(a, "done", r, cached=i == 0, wall_s=r["wall_s"])
           for i, (a, r) in enumerate(zip(axes, runs, strict=True))]
    grub = {**BASE, "loader": "grub", "ram": "64G", "upfront": "256M", "initrd_size": "1G"}
    crash_log = "Fatal Python error: Segmentation fault\n\nCurrent thread 0x7f (most recent call first)"
    out.append(matrix_line(grub, "crash", None, attempts=2, wall_s=3.2, log=crash_log))
    out.append(matrix_line({**grub, "on_demand": ["allocator"]}, "timeout", None, wall_s=600.0,
                           log="budget of 600 s exceeded"))
    return out


@pytest.fixture(scope="module")
def page(lines: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("page") / "matrix.html"
    write_html(path, lines, command_line="lazyaccept matrix sweep.toml --html matrix.html")
    return path


def outcomes(lines: list[dict]) -> list[str]:
    return [line["run"]["outcome"] if line["run"] else line["status"] for line in lines]


@pytest.mark.real_binary
def test_the_real_runs_cover_every_category(lines: list[dict]) -> None:
    got = outcomes(lines)
    assert got == ["kernel-entry", "stub-exited", "loader-failed", "kernel-entry", "loader-failed", "kernel-entry",
                   "loader-failed", "memory-lost", "terminated", "crash", "timeout"], got
    assert {classify_line(line).category.name for line in lines} == set(CATEGORIES)


@pytest.mark.real_binary
def test_the_summary_agrees_with_the_lines(lines: list[dict]) -> None:
    text = " ".join(summary([classify_line(line) for line in lines]))
    got = outcomes(lines)
    n_boot = got.count("kernel-entry")
    ready = sum(1 for line in lines if line["run"] and line["run"]["outcome"] == "kernel-entry"
                and line["run"]["os_outcome"] == "ready")
    n_fail = got.count("loader-failed") + got.count("stub-exited")
    assert text.startswith(f"{len(lines)} cells (")
    assert f"; {sum(line['cached'] for line in lines)} from the cache, " in text
    assert f"{n_boot} boot ({ready} to a ready userspace), {n_fail} fail (" in text, text
    where = re.search(r"\d+ fail \(([^)]*)\)", text)
    assert where and sum(int(w.split()[0]) for w in where[1].split(", ")) == n_fail, text  # fail where: all of them
    assert "2 loader failed in QEMU direct-boot loader" in text and "1 loader failed in systemd-boot" in text
    assert "1 stub failed" in text
    assert "1 loses memory to the OS" in text and "1 ends with the TD terminated" in text
    assert "2 did not finish in the harness (1 crashed and 1 timed out)" in text
    booted = [line for line in lines if line["run"] and line["run"]["outcome"] == "kernel-entry"]
    fastest = min(booted, key=lambda line: sum(p["virtual_ns"] for p in line["run"]["phases"]))
    assert f"Fastest to a ready userspace: {fastest['label']} (" in text


@pytest.mark.real_binary
def test_every_cell_is_in_the_matrix_coloured_by_its_outcome(lines: list[dict], page: Path) -> None:
    html = page.read_text()
    for line in lines:
        m = re.search(rf"<div class='cell (\S+)' data-key='{line['key']}' data-category='(\S+)' title='([^']*)'>"
                      r"<b>([^<]*)</b>(?:<br><span class='small'>([^<]*)<br>([^<]*)</span>)?", html)
        assert m, line["label"]
        outcome = line["run"]["outcome"] if line["run"] else None
        assert m[1] == m[2] == EXPECTED_CATEGORY.get(outcome or "", "harness"), (line["label"], m[1])
        assert line["label"] in m[3]
        if line["run"]:
            time_ns = sum(p["virtual_ns"] for p in line["run"]["phases"])
            assert m[5].endswith(f"{time_ns / 1e9:.2f} s"), m[5]  # virtual time to ready or to the failure
            assert re.fullmatch(r"\d+\.\d\d [KMGT]iB", m[6]), m[6]
    # the colours: one a category, each the background of its class
    colours = {name: re.search(rf"div\.{name},span\.{name}\{{background:(#[0-9a-f]{{6}})\}}", html) for name in
               CATEGORIES}
    assert all(colours.values()) and len({c[1] for c in colours.values() if c}) == len(CATEGORIES)
    assert "ready in " in html and "6.00 GiB lost" in html and "terminated in PEI" in html
    assert "loader failed in systemd-boot: loader&#x27;s 1.00 GiB allocation" in html
    # rows: the combinations of the other axes; columns: the TD sizes, by size
    assert re.findall(r"<th data-col='([^']*)'>", html) == ["2815M", "4G", "8G", "64G"]
    assert "<script" in html and " hidden" not in html.split("<script")[0]  # without a script everything shows


@pytest.mark.real_binary
def test_failures_are_grouped_with_the_models_message_and_the_harness_logs_folded(lines: list[dict],
                                                                                   page: Path) -> None:
    html = page.read_text()
    failures = html[html.index("<h2>Cells that do not boot"):html.index("<h2>Provenance")]
    reasons = {line["run"]["termination"] or line["run"]["reason"] for line in lines
               if line["run"] and line["run"]["outcome"] != "kernel-entry"}  # a termination says who wrote where
    rows = re.findall(r"<tr><td class='name'>", failures)
    assert len(rows) == len(reasons)  # one row a reason
    import html as h
    for reason in reasons:
        assert h.escape(reason) in failures
    assert "by PeiCore (vCPU 0)" in failures
    assert "only an allocator that accepts on demand (option 1) helps" in failures  # systemd-boot's explanation
    assert "let the allocator accept on demand (--on-demand allocator)" in failures  # and the hint before it
    assert h.escape("accept all memory at ExitBootServices (--accept-all-at-exit") in failures  # memory lost
    assert re.search(r"<details><summary>crash: grub/[^<]*after 2 attempts[^<]*</summary><pre>Fatal Python error: "
                     "Segmentation fault", failures)
    assert "<details><summary>timeout: " in failures and "budget of 600 s exceeded" in failures
    provenance = html[html.index("<h2>Provenance"):]
    assert "6.12.117+deb13-cloud-amd64" in provenance and "6.1.0-50-cloud-amd64" in provenance
    assert "ovmf-x64-2025.02" in provenance and "sweep.toml --html matrix.html" in provenance


@pytest.mark.real_binary
def test_plots_against_td_size_keep_their_text(page: Path) -> None:
    html = page.read_text()
    assert html.count("<svg") == 2
    texts = set(re.findall(r"<text[^>]*>([^<]*)</text>", html))
    assert {"TD memory size", "2815M", "4G", "8G", "64G", "virtual time to a ready userspace (s)",
            "accepted memory (GiB)"} <= texts, texts
    assert "direct debian:linux-6.12 8 256M allocator 1G" in texts  # a legend line per row of the matrix
    caption = re.search(r"<figcaption class='small'>([^<]*)</figcaption>", html)
    assert caption and "Not plotted, not ready at: " in caption[1]
    assert "systemd-boot debian:linux-6.12 8 256M none 1G (64G)" in caption[1]


def test_hundreds_of_cells_make_one_row_per_combination(lines: list[dict], tmp_path: Path) -> None:
    # the real runs' records under more axis values (a sweep's layout, not its results): 9 x 4 x 6 = 216 cells
    many = [{**line, "key": f"{i}-{j}-{k}", "axes": {**line["axes"], "host_profile": p, "os": o}}
            for i, line in enumerate(lines[:9]) for j, p in enumerate(("kvm-2m", "kvm-4k", "a", "x<'&>\""))
            for k, o in enumerate(("model", "real", "c", "d", "e", "f"))]
    path = tmp_path / "many.html"
    write_html(path, many)
    html = path.read_text()
    assert html.count("<div class='cell ") == 216 and len(re.findall(r"<tr class='row'", html)) == 7 * 24
    assert "216 cells (over " in html and "too many to name: the table names them" in html
    assert "x<'&>" not in html and "data-axis-host-profile='x&lt;&#x27;&amp;&gt;&quot;'" in html  # escaped


def test_one_size_has_no_plot_and_pivots_on_the_axis_with_most_values(lines: list[dict], tmp_path: Path) -> None:
    four = [line for line in lines if line["axes"]["ram"] == "4G"]
    path = tmp_path / "m.html"
    write_html(path, four)
    html = path.read_text()
    assert "<svg" not in html and "One TD size" in html
    # at 4G: upfront and initrd_size have two values each, the first seen of them goes across
    assert re.findall(r"<th data-col='[^']*'>([^<]*)</th>", html) == ["upfront below-4g", "upfront 256M"]
    assert "Every cell: loader direct; kernel debian:linux-6.12; ram 4G; vcpus 8" in html


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("status"), "matrix line 2: missing key (field status)"),
    (lambda d: d.update(status="exploded"), "matrix line 2: unknown status 'exploded' (one of done, timeout, "
     "crash, error) (field status)"),
    (lambda d: d.update(run=None), "matrix line 2: a done cell carries its run record"),
    (lambda d: d["run"].pop("phases"), "matrix line 2: missing key (field run.phases)"),
    (lambda d: d["run"].update(outcome="fine"), "matrix line 2: unknown outcome 'fine' (field run.outcome)"),
    (lambda d: d.update(attempts="1"), "matrix line 2: expected int, got str \"1\" (field attempts)"),
    (lambda d: d.update(cached=1), "matrix line 2: expected bool, got int 1 (field cached)"),
])
def test_a_bad_line_is_one_error_naming_the_line_and_field(lines: list[dict], tmp_path: Path, change,
                                                           message: str) -> None:
    bad = json.loads(json.dumps(lines[:3]))
    change(bad[1])
    with pytest.raises(InputError) as info:
        write_html(tmp_path / "m.html", bad)
    assert str(info.value).startswith(message), str(info.value)
    assert not (tmp_path / "m.html").exists()


def test_a_crash_line_with_a_run_and_an_empty_file_are_refused(lines: list[dict], tmp_path: Path) -> None:
    crash = {**lines[-2], "run": lines[0]["run"]}
    with pytest.raises(InputError, match=r"matrix line 1: a crash cell has no run record \(null\) \(field run\)"):
        write_html(tmp_path / "m.html", [crash])
    with pytest.raises(InputError, match="matrix line 1: expected a JSON object, got list"):
        write_html(tmp_path / "m.html", [[]])  # type: ignore[list-item]
    with pytest.raises(InputError, match="no matrix cells"):
        write_html(tmp_path / "m.html", [])


def dump_dom(url: str) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=2000", "--dump-dom"]
    return subprocess.run([chromium(), *flags, url], check=True, capture_output=True, text=True, timeout=120).stdout


def visible_rows(dom: str) -> list[str]:
    """The matrix rows the browser shows: their data attributes, for rows without `hidden`."""
    return [attrs for attrs in re.findall(r"<tr class=\"row\"([^>]*)>", dom) if "hidden" not in attrs]


@pytest.mark.real_binary
def test_the_page_renders_and_its_filters_hide_rows_and_columns(lines: list[dict], page: Path) -> None:
    dom = dump_dom(page.as_uri())
    n_rows = len(re.findall(r"<tr class=\"row\"", dom))
    assert n_rows >= 8 and len(visible_rows(dom)) == n_rows
    assert f"Showing {n_rows} of {n_rows} rows, 4 of 4 ram columns." in dom
    assert "Compatibility matrix" in dom and f"{len(lines)} cells (" in dom
    # a fragment selects values as the checkboxes do: only systemd-boot's rows, only the 64G column
    dom = dump_dom(page.as_uri() + "#loader=systemd-boot&ram=64G")
    shown = visible_rows(dom)
    assert len(shown) == 1 and "data-axis-loader=\"systemd-boot\"" in shown[0], shown
    assert "Showing 1 of" in dom and "1 of 4 ram columns" in dom
    cols = re.findall(r"<t[hd] data-col=\"([^\"]*)\"[^>]*?( hidden=\"\")?>", dom)
    assert {c for c, h in cols if not h} == {"64G"} and {c for c, h in cols if h} == {"2815M", "4G", "8G"}
    dom = dump_dom(page.as_uri() + "#on_demand=allocator")
    shown = visible_rows(dom)
    assert shown and all("data-axis-on-demand=\"allocator\"" in r for r in shown), shown


CLICK = """<!DOCTYPE html><html><body><iframe id="f" src="matrix.html"></iframe><pre id="out"></pre><script>
document.getElementById('f').onload = () => {
  const d = document.getElementById('f').contentDocument;
  [...d.querySelectorAll('input[data-axis="loader"]')].find(b => b.value === 'direct').click();
  const rows = [...d.querySelectorAll('#matrix tr.row')];
  document.getElementById('out').textContent = JSON.stringify({
    shown: rows.filter(r => !r.hidden).map(r => r.getAttribute('data-axis-loader')),
    hidden: rows.filter(r => r.hidden).map(r => r.getAttribute('data-axis-loader')),
    hash: d.defaultView.location.hash, text: d.getElementById('shown').textContent});
};
</script></body></html>"""


@pytest.mark.real_binary
def test_unchecking_a_box_hides_its_rows_and_puts_the_choice_in_the_url(lines: list[dict], page: Path) -> None:
    # a page beside the matrix clicks the checkbox 'direct' of the loader axis in a frame, as a user would
    wrapper = page.parent / "click.html"
    wrapper.write_text(CLICK)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
             "--virtual-time-budget=3000", "--dump-dom"]
    dom = subprocess.run([chromium(), *flags, wrapper.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    out = re.search(r"<pre id=\"out\">([^<]*)</pre>", dom)
    assert out, dom[-2000:]
    got = json.loads(out[1].replace("&quot;", '"'))
    loaders = {line["axes"]["loader"] for line in lines}
    assert got["shown"] and set(got["shown"]) == loaders - {"direct"} and set(got["hidden"]) == {"direct"}, got
    assert got["hash"] == "#loader=" + ",".join(v for v in ("systemd-boot", "grub") if v in loaders)
    assert got["text"] == f"Showing {len(got['shown'])} of {len(got['shown']) + len(got['hidden'])} rows, 4 of 4 " \
        "ram columns."
