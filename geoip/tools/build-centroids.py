#!/usr/bin/env python3
"""Derives geoip/country-centroids.csv from the `world-countries` npm package
(mledoze/countries, ODbL 1.0): `npm pack world-countries`, unpack, then
    python3 geoip/tools/build-centroids.py package/ > geoip/country-centroids.csv

lat/lon is the package's `latlng` (a representative point of the country).
radius_km covers the country's largest polygon (its mainland): the greatest
great-circle distance from lat/lon to a vertex of that polygon, rounded up to
10 km. Far-flung islands are left out on purpose, so Hawaii does not make every
US position 6,000 km wide. Countries without a shape fall back to 1.5 times the
radius of a circle of the country's area.
"""
import csv, json, math, os, sys

def haversine_km(lat1, lon1, lat2, lon2):
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(a)))

def ring_area(ring):
    # planar shoelace in degrees: only used to pick the largest polygon
    return abs(sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(ring, ring[1:] + ring[:1]))) / 2

def polygons(geometry):
    if geometry["type"] == "Polygon":
        return [geometry["coordinates"]]
    if geometry["type"] == "MultiPolygon":
        return geometry["coordinates"]
    return []

def main(root):
    countries = json.load(open(os.path.join(root, "countries.json")))
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["country", "lat", "lon", "radius_km", "name"])
    for c in sorted(countries, key=lambda c: c["cca2"]):
        lat, lon = c["latlng"]
        shape = os.path.join(root, "data", c["cca3"].lower() + ".geo.json")
        radius = None
        if os.path.exists(shape):
            polys = [p for f in json.load(open(shape))["features"] for p in polygons(f.get("geometry") or {"type": ""})]
            if polys:
                outer = max(polys, key=lambda p: ring_area(p[0]))[0]
                radius = max(haversine_km(lat, lon, y, x) for x, y in outer)
        if radius is None:
            radius = 1.5 * math.sqrt(max(c.get("area", 0), 1) / math.pi)
        radius = max(10, math.ceil(radius / 10) * 10)
        out.writerow([c["cca2"], lat, lon, radius, c["name"]["common"]])

main(sys.argv[1])
