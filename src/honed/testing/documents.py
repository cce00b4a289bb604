"""Small documents of every type the knowledge base reads, for tests and demos.

`minimal_pdf` writes a PDF by hand because pypdf can only write blank pages and no PDF writer is a
dependency; the file is a catalog, a page tree, one Helvetica font and one text line per page.

>>> from pypdf import PdfReader; import io
>>> PdfReader(io.BytesIO(minimal_pdf(["Troponin rises after heart injury."]))).pages[0].extract_text()
'Troponin rises after heart injury.'
"""

from __future__ import annotations

from pathlib import Path

MARKDOWN = """# Glucose testing

Fasting plasma glucose needs at least 8 hours without food. A normal fasting value is 3.9 to 6.1 mmol/L.

## HbA1c

HbA1c reflects average blood glucose over about three months, so fasting is not needed.

```
# not a heading: inside a code fence
```

# 血糖检测

空腹血糖需要禁食至少8小时。糖化血红蛋白反映近三个月的平均血糖水平，不需要空腹。糖尿病的诊断需要复查。
"""

HTML = """<html><head><title>Potassium</title><script>var tracking = 1;</script><style>p {color: red}</style></head>
<body><nav>Home | About us</nav>
<h1>Potassium</h1><p>Serum potassium is usually 3.5 to 5.0 mmol/L in adults.</p>
<h2>Hemolysis</h2><p>Hemolysis releases potassium from red cells and makes the result <b>falsely high</b>.</p>
<ul><li>Avoid fist clenching.</li><li>Process the sample quickly.</li></ul>
<footer>Copyright</footer></body></html>
"""

TEXT = "Turnaround time is the time from sample collection to the reported result.\n\nStat tests are reported within one hour.\n"

PDF_PAGES = ["Troponin rises within hours of heart muscle injury.", "NT-proBNP helps assess heart failure."]


def minimal_pdf(pages: list[str]) -> bytes:
    """Bytes of a valid PDF whose page i shows the ASCII line `pages[i]`."""
    n = len(pages)
    objects = ["<< /Type /Catalog /Pages 2 0 R >>",
               "<< /Type /Pages /Kids [" + " ".join(f"{4 + 2 * i} 0 R" for i in range(n)) + f"] /Count {n} >>",
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, text in enumerate(pages):
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET"
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>")
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)  # the cross-reference table lists each object's byte offset
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{off:010d} 00000 n \n" for off in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def write_sample_documents(folder: str | Path, *, with_bad: bool = True) -> Path:
    """A folder with glucose.md, potassium.html, turnaround.txt, cardiac.pdf (and, `with_bad`, files to skip)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "glucose.md").write_text(MARKDOWN, encoding="utf-8")
    (folder / "potassium.html").write_text(HTML, encoding="utf-8")
    (folder / "turnaround.txt").write_text(TEXT, encoding="utf-8")
    (folder / "cardiac.pdf").write_bytes(minimal_pdf(PDF_PAGES))
    if with_bad:
        from pypdf import PdfWriter

        blank = PdfWriter()
        blank.add_blank_page(612, 792)
        with open(folder / "scanned.pdf", "wb") as fh:
            blank.write(fh)
        (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a pdf")
        (folder / "empty.md").write_text("  \n", encoding="utf-8")
    return folder
