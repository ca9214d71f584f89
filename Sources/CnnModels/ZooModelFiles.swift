// The zoo's model files (configs/models/*.yaml), compiled in so that an installed binary
// needs no configs folder beside it: SwiftPM resource bundles are looked up next to the
// executable, which a copied or installed binary does not carry. ZooFileEquivalenceTests
// checks each string equals its file byte for byte. After editing a file, regenerate this
// one from the package root with the generator at the end of this file:
//   sed -n 's|^// GEN ||p' Sources/CnnModels/ZooModelFiles.swift | python3 - .

/// The text of each built-in model file.
public enum ZooModelFiles {
    /// The YAML of `model`'s file, configs/models/<name>.yaml.
    public static func yaml(for model: ZooModel) -> String {
        switch model {
        case .lenet5: return lenet5
        case .fashionCNN: return fashionCNN
        case .minivgg: return minivgg
        case .resnet20: return resnet20
        case .alexnet: return alexnet
        case .vgg11: return vgg11
        case .vgg16: return vgg16
        case .nin: return nin
        case .googlenet: return googlenet
        case .resnet18: return resnet18
        case .densenet121: return densenet121
        }
    }

    static let lenet5 = #"""
# LeNet-5 as in d2l and seed 003: sigmoid activations, average pooling, 5x5 convolutions
# (the first padded to keep 28x28), three fully connected layers.
name: lenet5
summary: LeNet-5 (sigmoid, average pooling), d2l / seed 003
input: [1, 28, 28]
classes: 10
layers:
  - {type: conv, out: 6, kernel: 5, padding: 2}
  - sigmoid
  - {type: avgpool, kernel: 2, stride: 2}
  - {type: conv, out: 16, kernel: 5}
  - sigmoid
  - {type: avgpool, kernel: 2, stride: 2}
  - flatten
  - {type: linear, out: 120}
  - sigmoid
  - {type: linear, out: 84}
  - sigmoid
  - {type: linear, out: classes}

"""#

    static let fashionCNN = #"""
# Seed 004's Fashion-MNIST network: three conv + BatchNorm + ReLU + max-pool blocks,
# dropout after the second, then a 512-unit hidden layer.
name: fashion-cnn
summary: three conv + BN blocks, seed 004
input: [1, 28, 28]
classes: 10
layers:
  - {type: conv, out: 25, kernel: 3, stride: 1, padding: 1}
  - batchnorm
  - relu
  - {type: maxpool, kernel: 2, stride: 2}
  - {type: conv, out: 50, kernel: 3, stride: 1, padding: 1}
  - batchnorm
  - relu
  - {type: dropout, p: 0.2}
  - {type: maxpool, kernel: 2, stride: 2}
  - {type: conv, out: 75, kernel: 3, stride: 1, padding: 1}
  - batchnorm
  - relu
  - {type: maxpool, kernel: 2, stride: 2}
  - flatten
  - {type: linear, out: 512}
  - {type: dropout, p: 0.3}
  - relu
  - {type: linear, out: classes}

"""#

    static let minivgg = #"""
# MiniVGG for CIFAR-10 (seed 000's table): conv-ReLU-BN order, two blocks of two 3x3
# convolutions, max-pool and dropout, then a 512-unit layer with BatchNorm1d.
name: minivgg
summary: MiniVGG for CIFAR-10, seed 000
input: [3, 32, 32]
classes: 10
layers:
  - {type: conv, out: 32, kernel: 3, padding: 1}
  - relu
  - batchnorm
  - {type: conv, out: 32, kernel: 3, padding: 1}
  - relu
  - batchnorm
  - {type: maxpool, kernel: 2}
  - {type: dropout, p: 0.25}
  - {type: conv, out: 64, kernel: 3, padding: 1}
  - relu
  - batchnorm
  - {type: conv, out: 64, kernel: 3, padding: 1}
  - relu
  - batchnorm
  - {type: maxpool, kernel: 2}
  - {type: dropout, p: 0.25}
  - flatten
  - {type: linear, out: 512}
  - relu
  - batchnorm
  - {type: dropout, p: 0.5}
  - {type: linear, out: classes}

"""#

    static let resnet20 = #"""
# ResNet-20 for 32x32 inputs (He et al. 2016, section 4.2): a 3x3 stem, three stages of
# three basic blocks (16, 32, 64 channels; the first block of stages 2 and 3 halves the
# size with a projection shortcut), global average pooling, a linear layer.
# Child names follow ../shared/reference/torch_models.py (c1 b1 c2 b2 sc).
name: resnet20
summary: ResNet-20 for CIFAR (He et al. 2016)
input: [3, 32, 32]
classes: 10
define:
  block:
    params: {out: ~, stride: 1}
    layer:
      type: residual
      shortcut: auto          # identity when the shape is kept, else 1x1 conv + BN
      shortcut_name: sc
      activation: relu
      branch:
        - {type: conv, name: c1, out: $out, kernel: 3, stride: $stride, padding: 1, bias: false}
        - {type: batchnorm, name: b1}
        - {type: relu, name: relu}
        - {type: conv, name: c2, out: $out, kernel: 3, padding: 1, bias: false}
        - {type: batchnorm, name: b2}
layers:
  - {type: conv, out: 16, kernel: 3, stride: 1, padding: 1, bias: false}
  - batchnorm
  - relu
  - {type: repeat, count: 3, layer: {type: block, out: 16}}
  - {type: repeat, count: 3, first: {stride: 2}, layer: {type: block, out: 32}}
  - {type: repeat, count: 3, first: {stride: 2}, layer: {type: block, out: 64}}
  - global_avgpool
  - flatten
  - {type: linear, out: classes}

"""#

    static let alexnet = #"""
# AlexNet as in seed 004's table (227x227 input, one tower, no LRN).
name: alexnet
summary: AlexNet as in seed 004's table (227x227)
input: [3, 227, 227]
classes: 1000
layers:
  - {type: conv, out: 96, kernel: 11, stride: 4, padding: 0}
  - relu
  - {type: maxpool, kernel: 3, stride: 2}
  - {type: conv, out: 256, kernel: 5, padding: 2}
  - relu
  - {type: maxpool, kernel: 3, stride: 2}
  - {type: conv, out: 384, kernel: 3, padding: 1}
  - relu
  - {type: conv, out: 384, kernel: 3, padding: 1}
  - relu
  - {type: conv, out: 256, kernel: 3, padding: 1}
  - relu
  - {type: maxpool, kernel: 3, stride: 2}
  - flatten
  - {type: linear, out: 4096}
  - relu
  - {type: dropout, p: 0.5}
  - {type: linear, out: 4096}
  - relu
  - {type: dropout, p: 0.5}
  - {type: linear, out: classes}

"""#

    static let vgg11 = #"""
# VGG-11 (torchvision layout): blocks of 3x3 convolutions (64, 128, 256, 512, 512 channels) each
# followed by a 2x2 max-pool; torchvision's names (features.N, classifier.N).
name: vgg11
summary: VGG-11 (torchvision layout)
input: [3, 224, 224]
classes: 1000
layers:
  - type: sequential
    name: features
    layers:
      - {type: repeat, count: 1, layers: [{type: conv, out: 64, kernel: 3, padding: 1}, relu]}
      - {type: maxpool, kernel: 2, stride: 2}
      - {type: repeat, count: 1, layers: [{type: conv, out: 128, kernel: 3, padding: 1}, relu]}
      - {type: maxpool, kernel: 2, stride: 2}
      - {type: repeat, count: 2, layers: [{type: conv, out: 256, kernel: 3, padding: 1}, relu]}
      - {type: maxpool, kernel: 2, stride: 2}
      - {type: repeat, count: 2, layers: [{type: conv, out: 512, kernel: 3, padding: 1}, relu]}
      - {type: maxpool, kernel: 2, stride: 2}
      - {type: repeat, count: 2, layers: [{type: conv, out: 512, kernel: 3, padding: 1}, relu]}
      - {type: maxpool, kernel: 2, stride: 2}
  - {type: flatten, name: flatten}
  - type: sequential
    name: classifier
    layers:
      - {type: linear, out: 4096}
      - relu
      - {type: dropout, p: 0.5}
      - {type: linear, out: 4096}
      - relu
      - {type: dropout, p: 0.5}
      - {type: linear, out: classes}

"""#

    static let vgg16 = #"""
# VGG-16 (torchvision layout): blocks of 3x3 convolutions (64, 128, 256, 512, 512 channels) each
# followed by a 2x2 max-pool; torchvision's names (features.N, classifier.N).
name: vgg16
summary: VGG-16 (torchvision layout)
input: [3, 224, 224]
classes: 1000
layers:
  - type: sequential
    name: features
    layers:
      - {type: repeat, count: 2, layers: [{type: conv, out: 64, kernel: 3, padding: 1}, relu]}
      - {type: maxpool, kernel: 2, stride: 2}
      - {type: repeat, count: 2, layers: [{type: conv, out: 128, kernel: 3, padding: 1}, relu]}
      - {type: maxpool, kernel: 2, stride: 2}
      - {type: repeat, count: 3, layers: [{type: conv, out: 256, kernel: 3, padding: 1}, relu]}
      - {type: maxpool, kernel: 2, stride: 2}
      - {type: repeat, count: 3, layers: [{type: conv, out: 512, kernel: 3, padding: 1}, relu]}
      - {type: maxpool, kernel: 2, stride: 2}
      - {type: repeat, count: 3, layers: [{type: conv, out: 512, kernel: 3, padding: 1}, relu]}
      - {type: maxpool, kernel: 2, stride: 2}
  - {type: flatten, name: flatten}
  - type: sequential
    name: classifier
    layers:
      - {type: linear, out: 4096}
      - relu
      - {type: dropout, p: 0.5}
      - {type: linear, out: 4096}
      - relu
      - {type: dropout, p: 0.5}
      - {type: linear, out: classes}

"""#

    static let nin = #"""
# Network in Network as in d2l: blocks of one spatial convolution and two 1x1
# convolutions (each with ReLU), max-pooling between, and a last block with one
# channel per class averaged globally instead of fully connected layers.
name: nin
summary: Network in Network (d2l)
input: [3, 224, 224]
classes: 1000
define:
  nin_block:
    params: {out: ~, kernel: ~, stride: ~, padding: ~}
    layer:
      type: sequential
      layers:
        - {type: conv, out: $out, kernel: $kernel, stride: $stride, padding: $padding}
        - relu
        - {type: conv, out: $out, kernel: 1}
        - relu
        - {type: conv, out: $out, kernel: 1}
        - relu
layers:
  - {type: nin_block, out: 96, kernel: 11, stride: 4, padding: 0}
  - {type: maxpool, kernel: 3, stride: 2}
  - {type: nin_block, out: 256, kernel: 5, stride: 1, padding: 2}
  - {type: maxpool, kernel: 3, stride: 2}
  - {type: nin_block, out: 384, kernel: 3, stride: 1, padding: 1}
  - {type: maxpool, kernel: 3, stride: 2}
  - {type: dropout, p: 0.5}
  - {type: nin_block, out: classes, kernel: 3, stride: 1, padding: 1}
  - global_avgpool
  - flatten

"""#

    static let googlenet = #"""
# GoogLeNet / Inception v1 as torchvision builds it (BatchNorm after every convolution,
# 3x3 convolutions in the "5x5" branch, no auxiliary classifiers). torchvision pools with
# ceil_mode; with floor mode and padding 1 the shapes at 224x224 are the same.
name: googlenet
summary: GoogLeNet / Inception v1 with BN (torchvision, no aux heads)
input: [3, 224, 224]
classes: 1000
define:
  basic_conv:                 # torchvision's BasicConv2d
    params: {out: ~, kernel: ~, stride: 1, padding: 0}
    layer:
      type: sequential
      layers:
        - {type: conv, name: conv, out: $out, kernel: $kernel, stride: $stride, padding: $padding, bias: false}
        - {type: batchnorm, name: bn, eps: 0.001}
        - {type: relu, name: relu}
  inception:
    params: {c1: ~, c3r: ~, c3: ~, c5r: ~, c5: ~, pool: ~}
    layer:
      type: concat
      branches:
        - {type: basic_conv, name: branch1, out: $c1, kernel: 1}
        - type: sequential
          name: branch2
          layers:
            - {type: basic_conv, out: $c3r, kernel: 1}
            - {type: basic_conv, out: $c3, kernel: 3, padding: 1}
        - type: sequential
          name: branch3
          layers:
            - {type: basic_conv, out: $c5r, kernel: 1}
            - {type: basic_conv, out: $c5, kernel: 3, padding: 1}
        - type: sequential
          name: branch4
          layers:
            - {type: maxpool, kernel: 3, stride: 1, padding: 1}
            - {type: basic_conv, out: $pool, kernel: 1}
layers:
  - {type: basic_conv, name: conv1, out: 64, kernel: 7, stride: 2, padding: 3}
  - {type: maxpool, name: maxpool1, kernel: 3, stride: 2, padding: 1}
  - {type: basic_conv, name: conv2, out: 64, kernel: 1}
  - {type: basic_conv, name: conv3, out: 192, kernel: 3, padding: 1}
  - {type: maxpool, name: maxpool2, kernel: 3, stride: 2, padding: 1}
  - {type: inception, name: inception3a, c1: 64, c3r: 96, c3: 128, c5r: 16, c5: 32, pool: 32}
  - {type: inception, name: inception3b, c1: 128, c3r: 128, c3: 192, c5r: 32, c5: 96, pool: 64}
  - {type: maxpool, name: maxpool3, kernel: 3, stride: 2, padding: 1}
  - {type: inception, name: inception4a, c1: 192, c3r: 96, c3: 208, c5r: 16, c5: 48, pool: 64}
  - {type: inception, name: inception4b, c1: 160, c3r: 112, c3: 224, c5r: 24, c5: 64, pool: 64}
  - {type: inception, name: inception4c, c1: 128, c3r: 128, c3: 256, c5r: 24, c5: 64, pool: 64}
  - {type: inception, name: inception4d, c1: 112, c3r: 144, c3: 288, c5r: 32, c5: 64, pool: 64}
  - {type: inception, name: inception4e, c1: 256, c3r: 160, c3: 320, c5r: 32, c5: 128, pool: 128}
  - {type: maxpool, name: maxpool4, kernel: 2, stride: 2}
  - {type: inception, name: inception5a, c1: 256, c3r: 160, c3: 320, c5r: 32, c5: 128, pool: 128}
  - {type: inception, name: inception5b, c1: 384, c3r: 192, c3: 384, c5r: 48, c5: 128, pool: 128}
  - {type: global_avgpool, name: avgpool}
  - {type: flatten, name: flatten}
  - {type: dropout, name: dropout, p: 0.2}
  - {type: linear, name: fc, out: classes}

"""#

    static let resnet18 = #"""
# ResNet-18 with torchvision's layout and names: a 7x7 stem, four stages of two basic
# blocks (64, 128, 256, 512 channels; stages 2-4 start with stride 2 and a 1x1
# projection "downsample"), global average pooling, fc.
name: resnet18
summary: ResNet-18 (torchvision)
input: [3, 224, 224]
classes: 1000
define:
  basic_block:
    params: {out: ~, stride: 1}
    layer:
      type: residual
      shortcut: auto
      shortcut_name: downsample
      activation: relu
      branch:
        - {type: conv, name: conv1, out: $out, kernel: 3, stride: $stride, padding: 1, bias: false}
        - {type: batchnorm, name: bn1}
        - {type: relu, name: relu}
        - {type: conv, name: conv2, out: $out, kernel: 3, padding: 1, bias: false}
        - {type: batchnorm, name: bn2}
  stage:
    params: {out: ~, stride: 2, blocks: 2}
    layer:
      type: sequential
      layers:
        - {type: repeat, count: $blocks, first: {stride: $stride}, layer: {type: basic_block, out: $out}}
layers:
  - {type: conv, name: conv1, out: 64, kernel: 7, stride: 2, padding: 3, bias: false}
  - {type: batchnorm, name: bn1}
  - {type: relu, name: relu}
  - {type: maxpool, name: maxpool, kernel: 3, stride: 2, padding: 1}
  - {type: stage, name: layer1, out: 64, stride: 1}
  - {type: stage, name: layer2, out: 128}
  - {type: stage, name: layer3, out: 256}
  - {type: stage, name: layer4, out: 512}
  - {type: global_avgpool, name: avgpool}
  - {type: flatten, name: flatten}
  - {type: linear, name: fc, out: classes}

"""#

    static let densenet121 = #"""
# DenseNet-121 (torchvision's layout): growth rate 32, bottleneck width 4x32, dense
# blocks of 6, 12, 24, 16 layers, each layer's output concatenated to its input,
# transitions halving channels and size.
name: densenet121
summary: DenseNet-121 (torchvision)
input: [3, 224, 224]
classes: 1000
define:
  dense_layer:                # x -> cat(x, conv2(relu(norm2(conv1(relu(norm1(x)))))))
    layer:
      type: concat
      branches:
        - {type: identity, name: input}
        - type: sequential
          name: new
          layers:
            - {type: batchnorm, name: norm1}
            - {type: relu, name: relu1}
            - {type: conv, name: conv1, out: 128, kernel: 1, bias: false}
            - {type: batchnorm, name: norm2}
            - {type: relu, name: relu2}
            - {type: conv, name: conv2, out: 32, kernel: 3, padding: 1, bias: false}
  dense_block:
    params: {layers: ~}
    layer:
      type: sequential
      layers:
        - {type: repeat, count: $layers, layer: {type: dense_layer, name: denselayer$i}}
  transition:
    layer:
      type: sequential
      layers:
        - {type: batchnorm, name: norm}
        - {type: relu, name: relu}
        - {type: conv, name: conv, out: in/2, kernel: 1, bias: false}
        - {type: avgpool, name: pool, kernel: 2, stride: 2}
layers:
  - type: sequential
    name: features
    layers:
      - {type: conv, name: conv0, out: 64, kernel: 7, stride: 2, padding: 3, bias: false}
      - {type: batchnorm, name: norm0}
      - {type: relu, name: relu0}
      - {type: maxpool, name: pool0, kernel: 3, stride: 2, padding: 1}
      - {type: dense_block, name: denseblock1, layers: 6}
      - {type: transition, name: transition1}
      - {type: dense_block, name: denseblock2, layers: 12}
      - {type: transition, name: transition2}
      - {type: dense_block, name: denseblock3, layers: 24}
      - {type: transition, name: transition3}
      - {type: dense_block, name: denseblock4, layers: 16}
      - {type: batchnorm, name: norm5}
      - {type: relu, name: relu5}
  - {type: global_avgpool, name: avgpool}
  - {type: flatten, name: flatten}
  - {type: linear, name: classifier, out: classes}

"""#

}

// GEN import os, sys
// GEN root = sys.argv[1]
// GEN # This generator's own text, carried at the end of the file it writes.
// GEN target = os.path.join(root, "Sources/CnnModels/ZooModelFiles.swift")
// GEN if os.path.exists(target) and '// GEN ' in open(target).read():
// GEN     GEN = ''.join(l[len('// GEN '):] for l in open(target).read().splitlines(True) if l.startswith('// GEN '))
// GEN else:
// GEN     GEN = open(sys.argv[2]).read()
// GEN names = ["lenet5", "fashion-cnn", "minivgg", "resnet20", "alexnet", "vgg11", "vgg16", "nin", "googlenet", "resnet18", "densenet121"]
// GEN cases = {"fashion-cnn": "fashionCNN"}
// GEN out = ['''// The zoo's model files (configs/models/*.yaml), compiled in so that an installed binary
// GEN // needs no configs folder beside it: SwiftPM resource bundles are looked up next to the
// GEN // executable, which a copied or installed binary does not carry. ZooFileEquivalenceTests
// GEN // checks each string equals its file byte for byte. After editing a file, regenerate this
// GEN // one from the package root with the generator at the end of this file:
// GEN //   sed -n 's|^// GEN ||p' Sources/CnnModels/ZooModelFiles.swift | python3 - .
// GEN 
// GEN /// The text of each built-in model file.
// GEN public enum ZooModelFiles {
// GEN     /// The YAML of `model`'s file, configs/models/<name>.yaml.
// GEN     public static func yaml(for model: ZooModel) -> String {
// GEN         switch model {''']
// GEN for n in names:
// GEN     out.append(f'        case .{cases.get(n, n)}: return {cases.get(n, n)}')
// GEN out.append('        }\n    }\n')
// GEN for n in names:
// GEN     text = open(os.path.join(root, "configs/models", n + ".yaml")).read()
// GEN     assert '"""#' not in text
// GEN     out.append(f'    static let {cases.get(n, n)} = #"""\n{text}\n"""#\n')
// GEN out.append('}\n')
// GEN out.append(''.join('// GEN ' + l + '\n' for l in GEN.splitlines()))
// GEN open(os.path.join(root, "Sources/CnnModels/ZooModelFiles.swift"), "w").write("\n".join(out))
