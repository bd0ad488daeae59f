"""A FastAPI app paginated by fastapi-pagination (PyPI), plus the shapes real APIs
use that no paginator library names, written the plain FastAPI way.

Run as ``python fastapi_site.py PORT RECORDS``:

- ``/page``        fastapi-pagination ``Page``: ``?page=&size=`` ->
                   ``{"items", "total", "page", "size", "pages"}``
- ``/limitoffset`` fastapi-pagination ``LimitOffsetPage``: ``?limit=&offset=``
- ``/array``       a top-level JSON array, ``?page=&per_page=``, the record total in
                   ``X-Total-Count``, and 404 for a page past the end
- ``/jsonl``       JSON Lines served as ``application/json``, ``?page=&per_page=``
"""

from __future__ import annotations

import json
import sys

import uvicorn
from fastapi import FastAPI, HTTPException, Response
from fastapi_pagination import LimitOffsetPage, Page, add_pagination, paginate
from pydantic import BaseModel

RECORDS = int(sys.argv[2]) if len(sys.argv) > 2 else 1000


class Item(BaseModel):
    id: int
    name: str


DATA = [Item(id=i, name=f"item {i}") for i in range(1, RECORDS + 1)]
app = FastAPI()


@app.get("/page")
def page() -> Page[Item]:
    return paginate(DATA)


@app.get("/limitoffset")
def limit_offset() -> LimitOffsetPage[Item]:
    return paginate(DATA)


def _slice(page: int, per_page: int) -> list[Item]:
    chunk = DATA[(page - 1) * per_page: page * per_page]
    if page < 1 or not chunk:
        raise HTTPException(status_code=404, detail="no such page")
    return chunk


@app.get("/array")
def array(response: Response, page: int = 1, per_page: int = 10) -> list[Item]:
    response.headers["X-Total-Count"] = str(len(DATA))
    return _slice(page, per_page)


@app.get("/jsonl")
def json_lines(page: int = 1, per_page: int = 10) -> Response:
    body = "".join(json.dumps(item.model_dump()) + "\n" for item in _slice(page, per_page))
    return Response(body, media_type="application/json")


add_pagination(app)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
