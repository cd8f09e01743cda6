"""Writes the miniature E2E-style files beside this script (`python -m experiments.data.mini_e2e.generate`).

Synthetic restaurant descriptions in the E2E challenge's CSV format (`mr,ref`, two references per
meaning representation, written from different sentence templates), drawn with a fixed seed:
200 MRs for training, 40 for validation, 40 for test. They stand in for the real E2E files, which
cannot be downloaded here; the values follow E2E's attributes and value sets.
"""

import csv
import pathlib
import random

NAMES = ('The Vaults', 'Aromi', 'The Eagle', 'Blue Spice', 'The Punter', 'Zizzi', 'Cotto',
         'The Mill', 'Giraffe', 'Loch Fyne', 'Wildwood', 'The Phoenix', 'Strada', 'Alimentum',
         'Fitzbillies', 'The Olive Grove', 'Midsummer House', 'Browns Cambridge', 'Clowns',
         'The Rice Boat')
EAT_TYPES = ('pub', 'restaurant', 'coffee shop')
FOODS = ('Italian', 'French', 'Chinese', 'English', 'Indian', 'Japanese', 'Fast food')
PRICES = ('cheap', 'moderate', 'high')
RATINGS = ('low', 'average', 'high')
AREAS = ('city centre', 'riverside')
SPLITS = {'trainset.csv': 200, 'devset.csv': 40, 'testset_w_refs.csv': 40}


def _mr(rng):
  name, near = rng.sample(NAMES, 2)
  return {'name': name, 'eatType': rng.choice(EAT_TYPES), 'food': rng.choice(FOODS),
          'priceRange': rng.choice(PRICES), 'customer rating': rng.choice(RATINGS),
          'area': rng.choice(AREAS), 'familyFriendly': rng.choice(('yes', 'no')), 'near': near}


def _refs(m):
  kids = 'is family friendly' if m['familyFriendly'] == 'yes' else 'is not family friendly'
  first = (f"{m['name']} is a {m['food']} {m['eatType']} in the {m['area']} near {m['near']}. "
           f"It has {m['priceRange']} prices and a {m['customer rating']} customer rating, and "
           f'{kids}.')
  second = (f"Near {m['near']} in the {m['area']}, {m['name']} serves {m['food']} food with "
            f"{m['priceRange']} prices. This {m['eatType']} {kids} and is rated "
            f"{m['customer rating']} by customers.")
  return first, second


def main():
  rng = random.Random(2017)
  here = pathlib.Path(__file__).parent
  for filename, count in SPLITS.items():
    with open(here / filename, 'w', newline='', encoding='utf-8') as f:
      writer = csv.writer(f)
      writer.writerow(('mr', 'ref'))
      for _ in range(count):
        m = _mr(rng)
        mr = ', '.join(f'{k}[{v}]' for k, v in m.items())
        for ref in _refs(m):
          writer.writerow((mr, ref))


if __name__ == '__main__':
  main()
