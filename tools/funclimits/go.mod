module github.com/tokenwatch/tokenwatch/tools/funclimits

go 1.26.0
