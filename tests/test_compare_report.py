"""`compare --out DIR`'s report: a summary computed from the cells, HTML tables without nan% or a relative spread of
a phase that grows with memory, the failing cells with their reason and a hint, provenance, plots whose text stays
text; and report.html as Debian's chromium renders it, headless."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lazyaccept import __version__, binaries
from lazyaccept.cli import main
from lazyaccept.compare import DEFAULT_POLICIES, compare
from lazyaccept.compare_report import failures, spread, summary, table
from lazyaccept.units import GiB, TiB

SIZES = [4 * GiB, 64 * GiB, 4 * TiB]
POLICIES = [p for p in DEFAULT_POLICIES if p.name in ("eager", "below-4g", "256M", "256M+option1")]
ARGS = ["compare", "--sizes", "4G,64G,4T", "--vcpus", "8", "--policies", "eager,below-4g,256M,256M+option1"]


@pytest.fixture(scope="module")
def matrix():
    return compare(POLICIES, SIZES, [8], ["kvm-2m"])


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert main([*ARGS, "--out", str(out)]) == 1  # 256M without on-demand fails: compare exits 1 (README)
    return out


def test_the_firmware_spread_is_words_not_nan_or_a_huge_percentage(matrix) -> None:
    assert spread(matrix, "256M", 8, "kvm-2m") == "n/a (boots at no size)"  # was nan%: max/min of nothing
    eager = spread(matrix, "eager", 8, "kvm-2m")  # was 102200%: a relative spread of a phase growing x1000
    assert re.fullmatch(r"grows x1\d\d\d: 1\.\d\d s at 4G to 18\d\d\.\d\d s at 4T", eager), eager
    assert spread(matrix, "256M+option1", 8, "kvm-2m").startswith("flat: 0.18 s to 0.18 s (within 0.")
    text = table(matrix, 8, "kvm-2m")
    assert "nan" not in text and not re.search(r"\d{4,}\.\d%", text)
    rows = text.splitlines()
    assert rows[1].split() == ["policy", "4G", "64G", "4T"]
    assert len({len(r) for r in rows[2:6]}) == 1, "the policy rows are aligned"


def test_the_summary_says_what_boots_where_and_what_is_fastest(matrix) -> None:
    text = " ".join(summary(matrix))
    assert "12 runs: 4 policies x 3 TD sizes x 8 vCPUs on host profile kvm-2m" in text
    assert "eager, below-4g and 256M+option1 boot at every size (4G to 4T)" in text
    assert "256M boots at no size (failing at the stub initrd buffer step)" in text
    assert re.search(r"Fastest to a ready userspace: 256M\+option1 at 4G with 8 vCPUs, 0\.\d\d s", text), text
    assert "At 4T the fastest is 256M+option1" in text and "the slowest eager" in text
    assert "The firmware phase of below-4g and 256M+option1 stays flat" in text and "eager's grows x1" in text
    assert "3 of 12 runs fail" in text


def test_failures_name_the_cells_the_reason_and_a_hint(matrix) -> None:
    [fail] = failures(matrix, POLICIES)
    assert (fail.policy, fail.step, fail.cells) == ("256M", "stub initrd buffer", tuple((s, 8) for s in SIZES))
    assert fail.reason.startswith("4G, 8 vCPUs: Failed to load initrd: AllocatePages(MaxAddress, LoaderData, 64M)")
    assert "option 1" in fail.hint


def test_report_html_is_tables_summary_failures_and_provenance(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text()
    assert "<pre" not in page and "nan%" not in page and not re.search(r"\d{4,}\.\d%", page)
    assert "<p class='summary'>12 runs:" in page and page.count("<table>") == 3
    # headings are titles, not file names
    headings = re.findall(r"<h[123]>(.*?)</h[123]>", page)
    assert "kvm-2m, 8 vCPUs" in headings and "Boot time against TD size" in headings
    assert not any(re.search(r"\.(svg|png)|_\d+vcpu", h) for h in headings), headings
    failures_part = page[page.index("Runs that do not boot") : page.index("kvm-2m, 8 vCPUs</h2>")]
    assert "256M" in failures_part and "stub initrd buffer" in failures_part and "AllocatePages" in failures_part
    provenance = page[page.index("<h2>Provenance") :]
    assert f"<dd>{__version__}</dd>" in provenance
    effective = "lazyaccept compare --sizes 4G,64G,4T --vcpus 8 --profiles kvm-2m --policies " \
        f"eager,below-4g,256M,256M+option1 --initrd-size 64M --resident 512M --out {report_dir}"
    assert f"<code>{effective}</code>" in provenance  # every option's value: it reruns the same matrix
    for pkg in (binaries.OVMF, binaries.LINUX):
        assert pkg.version in provenance and pkg.sha256 in provenance
    assert "host profile kvm-2m" in provenance
    # no script needed: the plots are inline SVG whose text is text (svg.fonttype none)
    assert "<script" not in page and page.count("<svg") == 3
    for label in ("TD memory size", "virtual time (s)", "guest-physical address (GiB)", "MMIO hole", "4T"):
        assert re.search(rf"<text[^>]*>{re.escape(label)}</text>", page), label


def test_time_plot_ticks_are_sizes_and_failures_are_said(report_dir: Path) -> None:
    svg = (report_dir / "time_kvm-2m_8vcpu.svg").read_text()
    ticks = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    assert {"4G", "64G", "4T", "firmware", "OS to ready", "total", "policy", "phase"} <= set(ticks), ticks
    assert not any("2^" in t or "GiB" in t for t in ticks)
    assert "not plotted, does not boot: 256M (every size)" in ticks
    address = (report_dir / "address_space.svg").read_text()
    labels = set(re.findall(r"<text[^>]*>([^<]*)</text>", address))
    assert {"2G", "4G", "below 4 GiB, zoomed", "Linux after the handoff", "pending (unaccepted)"} <= labels


def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("Debian's chromium is not installed: `make tools` installs it (apt-get install chromium)")
    return exe


@pytest.mark.real_binary
def test_report_renders_in_a_real_browser(report_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    exe = chromium()
    url = (report_dir / "report.html").as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000"]
    shot = tmp_path / "report.png"
    subprocess.run([exe, *flags, f"--screenshot={shot}", url], check=True, capture_output=True, timeout=120)
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (1280, 2000)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200, "a blank or near-blank screenshot"
    assert max(n for n, _ in colours) < 0.95 * 1280 * 2000
    dom = subprocess.run([exe, *flags, "--dump-dom", url], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    assert "Up-front and on-demand accept policies compared" in dom and "12 runs: 4 policies" in dom
    cells = [re.sub(r"<[^>]+>", " ", c).split() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", dom, re.S)]
    words = {w for c in cells for w in c}
    assert {"4G", "64G", "4T", "eager", "below-4g", "256M", "256M+option1"} <= words
    assert any(re.fullmatch(r"\d+\.\d\d", w) for w in words), "times in the table cells"
    assert "Failed to load initrd" in dom and "add on-demand accept" in dom
    svg_text = set(re.findall(r"<text[^>]*>([^<]*)</text>", dom))
    assert {"TD memory size", "virtual time (s)", "guest-physical address (GiB)"} <= svg_text


def test_a_profile_file_names_its_plots_and_headings_by_the_profile(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "slow.toml").write_text('base = "kvm-4k"\nexit_ns = 6000\n')
    (tmp_path / "odd.toml").write_text('name = "my/odd name"\n')
    out = tmp_path / "out"
    profiles = f"{tmp_path / 'sub' / 'slow.toml'},{tmp_path / 'odd.toml'}"
    assert main(["compare", "--sizes", "4G", "--vcpus", "1", "--policies", "256M", "--profiles", profiles,
                 "--out", str(out)]) == 1  # 256M without on-demand accept fails (the report lists it)
    assert (out / "time_slow_1vcpu.svg").is_file() and (out / "accepted_my_odd_name_1vcpu.png").is_file()
    page = (out / "report.html").read_text()
    assert "<h2>slow, 1 vCPU</h2>" in page and "<h2>my/odd name, 1 vCPU</h2>" in page
    assert "<p class='summary'>2 runs: 1 policy x 1 TD size x 1 vCPU on host profiles slow and my/odd name," in page
    assert "2 of 2 runs fail" in page
