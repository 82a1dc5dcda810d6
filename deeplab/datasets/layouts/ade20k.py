"""ADE20K SceneParsing (`ade20k`, the ADEChallengeData2016 release): 150 classes + 0 'other', which
is the ignore label.

Layout: `ADEChallengeData2016/` with `images/{training,validation}/<id>.jpg` and
`annotations/{training,validation}/<id>.png` (mode L, 0 = 'other' = ignore, 1..150 classes);
splits `train` and `val`.
"""
from __future__ import annotations

import os

from deeplab import colormaps
from deeplab.datasets.layouts import base
from deeplab.errors import UserError

# The SceneParsing (objectInfo150) names of the 150 ADE20K classes, synonyms joined by ';' as in
# the benchmark's class table, preceded by id 0 'other' (the ignore label).
CLASS_NAMES = ('other',) + (
    'wall', 'building;edifice', 'sky', 'floor;flooring', 'tree', 'ceiling', 'road;route', 'bed',
    'windowpane;window', 'grass', 'cabinet', 'sidewalk;pavement',
    'person;individual;someone;somebody;mortal;soul', 'earth;ground', 'door;double;door', 'table',
    'mountain;mount', 'plant;flora;plant;life', 'curtain;drape;drapery;mantle;pall', 'chair',
    'car;auto;automobile;machine;motorcar', 'water', 'painting;picture', 'sofa;couch;lounge',
    'shelf', 'house', 'sea', 'mirror', 'rug;carpet;carpeting', 'field', 'armchair', 'seat',
    'fence;fencing', 'desk', 'rock;stone', 'wardrobe;closet;press', 'lamp',
    'bathtub;bathing;tub;bath;tub', 'railing;rail', 'cushion', 'base;pedestal;stand', 'box',
    'column;pillar', 'signboard;sign', 'chest;of;drawers;chest;bureau;dresser', 'counter', 'sand',
    'sink', 'skyscraper', 'fireplace;hearth;open;fireplace', 'refrigerator;icebox',
    'grandstand;covered;stand', 'path', 'stairs;steps', 'runway', 'case;display;case;showcase;vitrine',
    'pool;table;billiard;table;snooker;table', 'pillow', 'screen;door;screen', 'stairway;staircase',
    'river', 'bridge;span', 'bookcase', 'blind;screen', 'coffee;table;cocktail;table',
    'toilet;can;commode;crapper;pot;potty;stool;throne', 'flower', 'book', 'hill', 'bench',
    'countertop', 'stove;kitchen;stove;range;kitchen;range;cooking;stove', 'palm;palm;tree',
    'kitchen;island',
    'computer;computing;machine;computing;device;data;processor;electronic;computer;information;'
    'processing;system',
    'swivel;chair', 'boat', 'bar', 'arcade;machine', 'hovel;hut;hutch;shack;shanty',
    'bus;autobus;coach;charabanc;double-decker;jitney;motorbus;motorcoach;omnibus;passenger;vehicle',
    'towel', 'light;light;source', 'truck;motortruck', 'tower', 'chandelier;pendant;pendent',
    'awning;sunshade;sunblind', 'streetlight;street;lamp', 'booth;cubicle;stall;kiosk',
    'television;television;receiver;television;set;tv;tv;set;idiot;box;boob;tube;telly;goggle;box',
    'airplane;aeroplane;plane', 'dirt;track', 'apparel;wearing;apparel;dress;clothes', 'pole',
    'land;ground;soil', 'bannister;banister;balustrade;balusters;handrail',
    'escalator;moving;staircase;moving;stairway', 'ottoman;pouf;pouffe;puff;hassock', 'bottle',
    'buffet;counter;sideboard', 'poster;posting;placard;notice;bill;card', 'stage', 'van', 'ship',
    'fountain', 'conveyer;belt;conveyor;belt;conveyer;conveyor;transporter', 'canopy',
    'washer;automatic;washer;washing;machine', 'plaything;toy',
    'swimming;pool;swimming;bath;natatorium', 'stool', 'barrel;cask', 'basket;handbasket',
    'waterfall;falls', 'tent;collapsible;shelter', 'bag', 'minibike;motorbike', 'cradle', 'oven',
    'ball', 'food;solid;food', 'step;stair', 'tank;storage;tank', 'trade;name;brand;name;brand;marque',
    'microwave;microwave;oven', 'pot;flowerpot', 'animal;animate;being;beast;brute;creature;fauna',
    'bicycle;bike;wheel;cycle', 'lake', 'dishwasher;dish;washer;dishwashing;machine',
    'screen;silver;screen;projection;screen', 'blanket;cover', 'sculpture', 'hood;exhaust;hood',
    'sconce', 'vase', 'traffic;light;traffic;signal;stoplight', 'tray',
    'ashcan;trash;can;garbage;can;wastebin;ash;bin;ash-bin;ashbin;dustbin;trash;barrel;trash;bin',
    'fan', 'pier;wharf;wharfage;dock', 'crt;screen', 'plate', 'monitor;monitoring;device',
    'bulletin;board;notice;board', 'shower', 'radiator', 'glass;drinking;glass', 'clock', 'flag')


class Ade20k(base.Dataset):
  """ADE20K SceneParsing (ADEChallengeData2016): 150 classes + 0 'other', which is ignored."""
  name = 'ade20k'
  layout_help = 'ADEChallengeData2016/ with images/{training,validation}/ and annotations/...'
  root_candidates = ('ADEChallengeData2016',)
  SPLIT_FOLDERS = {'train': 'training', 'val': 'validation'}
  rgb_label_hint = ('expected a mode L annotation of class ids 0..150 as in ADEChallengeData2016 '
                    '(RGB-encoded annotations of the full ADE20K index are not supported)')

  def __init__(self):
    super().__init__(151, 0, CLASS_NAMES, colormaps.ade20k_colormap())

  def _is_root(self, folder):
    return (os.path.isdir(os.path.join(folder, 'images'))
            and os.path.isdir(os.path.join(folder, 'annotations')))

  def splits(self, root):
    return [s for s, sub in self.SPLIT_FOLDERS.items()
            if os.path.isdir(os.path.join(root, 'images', sub))]

  def scan(self, root, split):
    self.check_split(root, split)
    image_dir = os.path.join(root, 'images', self.SPLIT_FOLDERS[split])
    label_dir = os.path.join(root, 'annotations', self.SPLIT_FOLDERS[split])
    images = base.files_by_stem(image_dir, ('.jpg',))
    if not images:
      raise UserError(f'{image_dir}: split {split!r} is empty; expected <id>.jpg images')
    return base.pair_files(split, root, sorted(images), images.get,
                           lambda i: base.existing_file(os.path.join(label_dir, f'{i}.png')),
                           image_dir, (image_dir, f'{label_dir}/<id>.png'))
