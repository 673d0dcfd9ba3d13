"""``GET /ui``: a small web page over the JSON API (service/static/ui.html, ui.js, ui.css).

Pick a user and see their recent events, their recommendations with explanations and a plot
of how similar each recent event is to the current top recommendation; clicking an item sends
a ``click`` event and refreshes the list. The page itself is public and touches neither the
database nor the index; its script calls the API with the key pasted into the page.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app

bp = Blueprint("ui", __name__)


@bp.get("/ui")
def page() -> Response:
    return current_app.send_static_file("ui.html")
