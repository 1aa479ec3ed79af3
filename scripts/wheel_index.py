"""Writes the per-variant wheel indexes that

    pip install macko-spmv --index-url https://OWNER.github.io/REPO/whl/cu126

reads: one PEP 503 "simple" repository per variant (cpu, cu126, ...), each
listing the wheels of that variant attached to the project's GitHub releases.
The release job uploads every wheel with its variant as the asset's label;
a wheel without a label is filed by its local version label (+cu126).

    gh api --paginate repos/OWNER/REPO/releases | python scripts/wheel_index.py --out site

Input: the GitHub API's release objects, as one JSON array or several in a
row (what `gh api --paginate` prints). Output: OUT/whl/VARIANT/index.html,
OUT/whl/VARIANT/macko-spmv/index.html, and OUT/whl/index.html listing the
variants.
"""

import argparse
import html
import json
import os
import re
import sys
from urllib.parse import quote, urlsplit, urlunsplit

PROJECT = "macko-spmv"
VARIANT = re.compile(r"cpu|cu\d+")


def releases_from(text):
    """Every release object in `text`: JSON arrays, one after another."""
    decoder, position, releases = json.JSONDecoder(), 0, []
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return releases
        value, position = decoder.raw_decode(text, position)
        releases += value if isinstance(value, list) else [value]


def variant_of(asset):
    label = (asset.get("label") or "").strip()
    if VARIANT.fullmatch(label):
        return label
    match = re.match(r"[^-]+-[^-]+\+([a-z0-9]+)-", asset["name"])
    return match[1] if match and VARIANT.fullmatch(match[1]) else None


def href(asset):
    """The download URL, its file name percent-encoded ("+" -> %2B), with the
    sha256 fragment when GitHub reports the digest."""
    parts = urlsplit(asset["browser_download_url"])
    folder, _, name = parts.path.rpartition("/")
    url = urlunsplit(parts._replace(path=f"{folder}/{quote(name, safe='')}"))
    digest = asset.get("digest") or ""
    return url + (f"#sha256={digest[len('sha256:'):]}" if digest.startswith("sha256:") else "")


def page(title, links):
    body = "\n".join(f'    <a href="{html.escape(url)}">{html.escape(text)}</a><br>' for text, url in links)
    return (f"<!DOCTYPE html>\n<html>\n  <head><meta name=\"pypi:repository-version\" content=\"1.0\">"
            f"<title>{html.escape(title)}</title></head>\n  <body>\n{body}\n  </body>\n</html>\n")


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the site's folder")
    args = parser.parse_args(argv)

    wheels = {}  # variant -> {file name: href}
    for release in releases_from(sys.stdin.read()):
        if release.get("draft"):
            continue
        for asset in release.get("assets", []):
            if not asset["name"].endswith(".whl"):
                continue
            variant = variant_of(asset)
            if variant is None:
                print(f"wheel_index: no variant for {asset['name']}, left out", file=sys.stderr)
                continue
            wheels.setdefault(variant, {})[asset["name"]] = href(asset)

    root = os.path.join(args.out, "whl")
    for variant, files in sorted(wheels.items()):
        write(os.path.join(root, variant, PROJECT, "index.html"),
              page(f"Links for {PROJECT} ({variant})", sorted(files.items())))
        write(os.path.join(root, variant, "index.html"),
              page(f"{PROJECT} wheels ({variant})", [(PROJECT, f"{PROJECT}/")]))
        print(f"wheel_index: {variant}: {len(files)} wheel(s)")
    write(os.path.join(root, "index.html"),
          page(f"{PROJECT} wheel indexes", [(variant, f"{variant}/") for variant in sorted(wheels)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
