"""The playground page (CONTRACT §12): ``GET /`` and its files, served from the package.

    static/           the page: index.html, its modules and styles, no build step
    static/vendor/    marked and DOMPurify, copied from web/node_modules by web/vendor.mjs

Every file is read once at startup and answered from memory, with an ``ETag`` (a reload
revalidates: 304) and a Content-Security-Policy that lets the page load only its own files
and talk only to its own origin: no inline script runs, so nothing a model writes can.
"""

from palaver.playground.files import PAGE_PATH, Playground

__all__ = ["PAGE_PATH", "Playground"]
